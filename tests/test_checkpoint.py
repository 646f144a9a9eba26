"""workers.checkpoint: CLIP weights from TorchScript archives and state dicts, no code run."""

from __future__ import annotations

import builtins
import os
import pickle
import random
import shlex
import sys
import types
import warnings
import zipfile
from collections import Counter
from pathlib import Path

import open_clip
import pytest
import torch
import torch.jit._pickle
from conftest import shared_file

from reattn_batch.workers.checkpoint import (
    check_tensors_only,
    load_tensors_only,
    read_clip_state_dict,
)
from reattn_batch.workers.errors import UserError

OPENAI_METADATA = ("input_resolution", "context_length", "vocab_size")


def tiny_clip(seed: int = 0) -> open_clip.model.CLIP:
    model = open_clip.model.CLIP(
        embed_dim=16,
        vision_cfg=dict(layers=1, width=32, head_width=16, patch_size=16, image_size=32),
        text_cfg=dict(context_length=16, vocab_size=500, width=32, heads=2, layers=1),
        quick_gelu=True,
    )
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.randn(tensor.shape, generator=gen))
    return model.eval()


def jit_save(module: torch.nn.Module, path: Path, trace: bool = False) -> Path:
    """Script ``module`` or, as OpenAI did for their CLIP, trace its forward."""
    with warnings.catch_warnings():  # torch.jit.* are deprecated, not gone
        warnings.simplefilter("ignore")
        if trace:
            inputs = (torch.randn(1, 3, 32, 32), torch.zeros(1, 16, dtype=torch.long))
            scripted = torch.jit.trace(module, inputs, check_trace=False)
        else:
            scripted = torch.jit.script(module)
        torch.jit.save(scripted, str(path))
    return path


def copy_zip(src: Path, dst: Path, drop: str) -> Path:
    """``src`` rewritten without the entries whose names contain ``drop``."""
    with zipfile.ZipFile(src) as old, zipfile.ZipFile(dst, "w") as new:
        for info in old.infolist():
            if drop not in info.filename:
                new.writestr(info, old.read(info))
    return dst


def assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert list(got) == list(want)
    for key, tensor in want.items():
        assert got[key].dtype == tensor.dtype, key
        assert got[key].shape == tensor.shape, key
        assert torch.equal(
            got[key].flatten().view(torch.uint8), tensor.flatten().view(torch.uint8)
        ), key


@pytest.mark.parametrize("half", [False, True], ids=["fp32", "fp16"])
def test_torchscript_archive_reads_back_as_its_state_dict(tmp_path: Path, half: bool) -> None:
    model = tiny_clip()
    if half:
        model = model.half()
    else:  # OpenAI's archive carries these as tensors next to the weights
        for name in OPENAI_METADATA:
            model.__dict__.pop(name, None)
            model.register_buffer(name, torch.tensor(77))
    path = jit_save(model, tmp_path / "ViT-B-16.pt")

    got = read_clip_state_dict(path)

    want = {k: v for k, v in model.state_dict().items() if k not in OPENAI_METADATA}
    # TorchScript keeps no record of persistent=False, so open_clip's causal mask comes back
    # like the torch.jit.load(path).state_dict() reference has it.
    assert set(got) - set(want) == {"attn_mask"}
    assert torch.equal(got.pop("attn_mask"), model.attn_mask)
    assert_same(got, want)
    assert {t.dtype for t in got.values()} == {torch.float16 if half else torch.float32}
    assert all(t.device.type == "cpu" and not t.requires_grad for t in got.values())


@pytest.mark.parametrize("trace", [False, True], ids=["scripted", "traced"])
def test_torchscript_archive_matches_torch_jit_load(tmp_path: Path, trace: bool) -> None:
    path = jit_save(tiny_clip(seed=1), tmp_path / "model.pt", trace=trace)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        reference = torch.jit.load(str(path)).state_dict()
    assert_same(read_clip_state_dict(path), dict(reference))


class WithPlainTensor(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(3, 2)
        self.table = torch.arange(3.0)  # an attribute, neither parameter nor buffer
        self.register_buffer("scale", torch.full((2,), 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x * self.table) * self.scale


def test_torchscript_archive_keeps_only_declared_parameters_and_buffers(tmp_path: Path) -> None:
    module = WithPlainTensor()
    path = jit_save(module, tmp_path / "plain_attr.pt")
    assert_same(read_clip_state_dict(path), module.state_dict())

    # Without the archived sources to declare them, every tensor attribute counts.
    bare = copy_zip(path, tmp_path / "no_code.pt", drop="/code/")
    assert set(read_clip_state_dict(bare)) == {"scale", "table", "proj.weight", "proj.bias"}


def test_archive_without_byteorder_record_like_pre_1_13_torch(tmp_path: Path) -> None:
    model = tiny_clip(seed=3).half()
    path = jit_save(model, tmp_path / "full.pt")
    old = copy_zip(path, tmp_path / "old.pt", drop="/byteorder")
    assert_same(read_clip_state_dict(old), read_clip_state_dict(path))


@pytest.mark.parametrize("wrap", ["plain", "state_dict+module", "model"])
def test_plain_state_dict_reads_back(tmp_path: Path, wrap: str) -> None:
    state = tiny_clip(seed=2).half().state_dict()
    saved = {
        "plain": state,
        "state_dict+module": {
            "epoch": 3,
            "state_dict": {f"module.{k}": v for k, v in state.items()},
        },
        "model": {"model": dict(state)},
    }[wrap]
    torch.save(saved, tmp_path / "weights.pth")
    assert_same(read_clip_state_dict(str(tmp_path / "weights.pth")), dict(state))


class Payload:
    """Unpickling this runs a side effect that leaves ``marker`` behind."""

    def __init__(self, marker: Path, via: str) -> None:
        self.marker, self.via = marker, via

    def __reduce__(self) -> tuple:
        if self.via == "os.system":
            return os.system, (f"touch {shlex.quote(str(self.marker))}",)
        return builtins.exec, (f"open({str(self.marker)!r}, 'w').close()",)


@pytest.mark.parametrize("via", ["os.system", "exec"])
def test_malicious_pickle_is_refused_without_running(tmp_path: Path, via: str) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"visual.proj": torch.ones(2), "x": Payload(tmp_path / "pwned", via)}, path)

    with pytest.raises(UserError, match="refuses to execute code") as err:
        read_clip_state_dict(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "pwned").exists()

    torch.load(path, weights_only=False)  # the payload is live: an unsafe load runs it
    assert (tmp_path / "pwned").exists()


def test_both_loaders_word_a_refused_global_alike(tmp_path: Path) -> None:
    """The CLIP loader and the upsampler loader read weights through one checked reader;
    their lines for a file that would run code were worded apart ("refuses to execute
    code" / "is not a readable checkpoint"): now one mapping words both."""
    from reattn_batch.workers.upsampler import load_upsampler

    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"x": Payload(tmp_path / "pwned", "os.system")}}, path)
    lines = []
    for load in (read_clip_state_dict, lambda p: load_upsampler("jbu_one", p, feat_dim=64)):
        with pytest.raises(UserError) as err:
            load(path)
        lines.append(str(err.value))
    for line in lines:
        assert "asks to run posix.system while loading" in line, line
        assert "refuses to execute code from a checkpoint" in line and str(path) in line, line
    assert not (tmp_path / "pwned").exists()


class TypeTagged:
    """Pickles as ``torch.jit._pickle.restore_type_tag(value, type)``, the harmless identity
    TorchScript's own pickles wrap containers in."""

    def __init__(self, value: object) -> None:
        self.value = value

    def __reduce__(self) -> tuple:
        return torch.jit._pickle.restore_type_tag, (self.value, "Dict[str, Tensor]")


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_plain_state_dict_is_built_by_torch_load_weights_only(tmp_path: Path, legacy: bool) -> None:
    # The restricted pass allows restore_type_tag (TorchScript archives need it);
    # torch.load(weights_only=True) does not. A state dict wrapped in it passes the
    # validation, and is refused by torch.load's own allow-list: torch.load builds it.
    path = tmp_path / "tagged.pth"
    state = tiny_clip(seed=8).state_dict()
    torch.save(TypeTagged(state), path, _use_new_zipfile_serialization=not legacy)
    with open(path, "rb") as f:
        check_tensors_only(f, path.stat().st_size)

    with pytest.raises(
        UserError, match=r"asks to run torch\.jit\._pickle\.restore_type_tag while loading"
    ) as err:
        read_clip_state_dict(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert "weights_only" not in str(err.value)  # torch's advice to load unsafely is dropped


def torchscript_zip(path: Path, data_pkl: bytes) -> Path:
    """A hand-made archive laid out like torch.jit.save's."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("evil/data.pkl", data_pkl)
        archive.writestr("evil/constants.pkl", pickle.dumps((), protocol=2))
        archive.writestr("evil/version", "4\n")
        archive.writestr("evil/byteorder", sys.byteorder)
    return path


@pytest.mark.parametrize("where", ["root", "nested"])
def test_torchscript_archive_with_forbidden_global_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    # Let pickle name a class "__torch__.evil Mod" the way TorchScript pickles modules.
    fake = types.ModuleType("__torch__.evil")
    fake.Mod = type("Mod", (), {"__module__": "__torch__.evil"})
    monkeypatch.setitem(sys.modules, "__torch__", types.ModuleType("__torch__"))
    monkeypatch.setitem(sys.modules, "__torch__.evil", fake)
    payload = Payload(tmp_path / "pwned", "exec")
    if where == "root":
        data = pickle.dumps(payload, protocol=2)
    else:
        inner = fake.Mod()
        inner.__dict__.update(training=False, weight=payload)
        outer = fake.Mod()
        outer.__dict__.update(training=False, visual=inner)
        data = pickle.dumps(outer, protocol=2)
    path = torchscript_zip(tmp_path / "ViT-B-16.pt", data)

    with pytest.raises(
        UserError, match=r"run \S*exec while loading.*refuses to execute code"
    ) as err:
        read_clip_state_dict(path)
    assert str(path) in str(err.value)
    assert not (tmp_path / "pwned").exists()


def test_missing_file_names_path_and_fix(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "ViT-B-16.pt"
    with pytest.raises(UserError, match="no such file") as err:
        read_clip_state_dict(path)
    assert f"clip_weights={path}" in str(err.value) and "'openai'" in str(err.value)


def test_random_bytes_and_truncated_archive_are_reported(tmp_path: Path) -> None:
    noise = tmp_path / "noise.pt"
    noise.write_bytes(random.Random(0).randbytes(4096))
    archive = jit_save(tiny_clip(), tmp_path / "full.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])

    for path in (noise, truncated):
        with pytest.raises(UserError, match="corrupt or truncated") as err:
            read_clip_state_dict(path)
        assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_archive_with_a_missing_tensor_entry_is_reported(tmp_path: Path) -> None:
    archive = jit_save(tiny_clip(), tmp_path / "full.pt")
    broken = copy_zip(archive, tmp_path / "broken.pt", drop="/data/0")
    with pytest.raises(UserError, match="corrupt or truncated"):
        read_clip_state_dict(broken)


@pytest.mark.parametrize(
    ("content", "problem"),
    [({}, "is empty"), ({"state_dict": {}}, "is empty"), ({"w": [1.0]}, "non-tensor entry 'w'")],
)
def test_empty_or_non_tensor_dict_is_refused(tmp_path: Path, content: dict, problem: str) -> None:
    path = tmp_path / "weights.pth"
    torch.save(content, path)
    with pytest.raises(UserError, match=problem) as err:
        read_clip_state_dict(path)
    assert str(path) in str(err.value)


def assert_same_tree(got: object, want: object, where: str = "") -> None:
    """``got`` (read here) equals ``want`` (a plain torch.load's): containers, values, tensors
    with their type (a Parameter stays one), dtype, shape, stride and bytes."""
    if torch.is_tensor(want):
        assert type(got) is type(want) and got.requires_grad == want.requires_grad, where
        assert (got.dtype, got.shape, got.stride()) == (want.dtype, want.shape, want.stride())
        assert torch.equal(got.flatten().view(torch.uint8), want.flatten().view(torch.uint8))
    elif isinstance(want, dict):
        assert type(got) is type(want) and list(got) == list(want), where
        for key in want:
            assert_same_tree(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, (list, tuple)) and not isinstance(want, torch.Size):
        assert type(got) is type(want) and len(got) == len(want), where
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            assert_same_tree(a, b, f"{where}[{i}]")
    else:
        assert type(got) is type(want) and got == want, where


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_state_dict_with_shared_storages_reads_like_torch_load(
    tmp_path: Path, legacy: bool
) -> None:
    # Tied weights (one module twice), one tensor under two keys, a slice and a transpose of
    # another tensor's storage, mixed dtypes, and the plain values Lightning files carry.
    linear = torch.nn.Linear(4, 3)
    tied = torch.nn.Sequential(linear, torch.nn.ReLU(), linear).state_dict()
    base = torch.arange(12.0).reshape(3, 4)
    saved = {
        "state_dict": {**tied, "a": base, "a_again": base, "rows": base[1:], "t": base.t()},
        "buffers": [torch.arange(5), torch.ones(2, dtype=torch.float16), torch.tensor(True)],
        "param": torch.nn.Parameter(torch.ones(2)),
        "hyper_parameters": {"lr": 1e-3, "name": "x", "ids": {1, 2}, "blob": b"\x00\xff"},
        "lr_schedulers": [{"milestones": Counter({30: 1, 60: 1}), "gamma": 0.1, "z": 1 + 2j}],
        "shape": torch.Size([2, 3]), "device": torch.device("cpu"), "dtype": torch.float16,
    }  # fmt: skip
    path = tmp_path / "shared.ckpt"
    torch.save(saved, path, _use_new_zipfile_serialization=not legacy)

    got = load_tensors_only(path)
    assert_same_tree(got, torch.load(path, weights_only=True))
    sd = got["state_dict"]
    assert sd["0.weight"].data_ptr() == sd["2.weight"].data_ptr()  # still tied
    assert sd["a"] is sd["a_again"]
    storage = sd["a"].untyped_storage().data_ptr()
    assert sd["rows"].untyped_storage().data_ptr() == sd["t"].untyped_storage().data_ptr()
    assert sd["rows"].untyped_storage().data_ptr() == storage
    assert sd["0.weight"].untyped_storage().data_ptr() != storage


def test_real_featup_checkpoint_reads_like_torch_load() -> None:
    path = shared_file("weights/featup_clip_jbu_stack_cocostuff.ckpt")
    reference = torch.load(path, map_location="cpu", weights_only=True)
    assert_same_tree(load_tensors_only(path), reference)
