"""workers.checkpoint on crafted input: bounded time and memory, same result on normal files.

The bounds (a few seconds) are generous for a shared, noisy machine; the quadratic code
these tests guard against took minutes to hours on the same inputs, the exponential one
(a module tree whose nodes share their child) 10 s and more for a 1 kB file 20 levels deep.
"""

from __future__ import annotations

import ast
import io
import pickle
import re
import subprocess
import sys
import time
import types
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from test_checkpoint import assert_same, jit_save, tiny_clip

from reattn_batch.workers.checkpoint import class_declarations, read_clip_state_dict
from reattn_batch.workers.errors import UserError
from reattn_batch.workers.upsampler import JBUOne, load_upsampler

BOUND_S = 5.0


def old_regex_declarations(source: str, name: str) -> list[str] | None:
    """The regular-expression reading the linear parser replaced (a reference for normal
    headers only: it backtracks quadratically over runs of blank lines)."""
    for body in re.split(r"^class ", source, flags=re.M)[1:]:
        if not body.startswith(f"{name}("):
            continue
        found = [
            re.search(rf"^\s+{k} = (\[.*\])$", body, re.M)
            for k in ("__parameters__", "__buffers__")
        ]
        if all(found):
            return [n for m in found for n in ast.literal_eval(m.group(1))]
    return None


def parsed(source: str, name: str) -> list[str] | None:
    literals = class_declarations(source).get(name)
    return None if literals is None else [n for lit in literals for n in ast.literal_eval(lit)]


def code_files(archive_path: Path) -> dict[str, str]:
    with zipfile.ZipFile(archive_path) as archive:
        return {
            n: archive.read(n).decode()
            for n in archive.namelist()
            if "/code/" in n and n.endswith(".py")
        }


@pytest.mark.parametrize("trace", [False, True], ids=["scripted", "traced"])
def test_parser_reads_real_torchscript_headers_as_the_regex_did(
    tmp_path: Path, trace: bool
) -> None:
    path = jit_save(tiny_clip(), tmp_path / "model.pt", trace=trace)
    checked = 0
    for source in code_files(path).values():
        names = [line[6:].partition("(")[0] for line in source.split("\n") if line[:6] == "class "]
        for name in [*names, "NoSuchClass"]:
            assert parsed(source, name) == old_regex_declarations(source, name), name
            checked += name != "NoSuchClass"
    assert checked >= 3  # CLIP, the vision and text towers, their blocks...


def test_parser_on_hand_written_headers() -> None:
    source = (
        "class A(Module):\n"
        '  __parameters__ = ["weight", "bias", ]\n'
        '  __buffers__ = ["running_mean", ]\n'
        "  weight : Tensor\n"
        "class B(Module):\n"  # declares only one of the two: not counted
        '  __parameters__ = ["w", ]\n'
        "class A(Module):\n"  # the first class of a name wins
        '  __parameters__ = ["other", ]\n'
        "  __buffers__ = []\n"
        "class C(Module):\n"
        '\t__buffers__ = ["b"]\n'
        "\t__parameters__ = []\n"
        '\t__parameters__ = ["ignored"]\n'  # the first declaration of a kind wins
        "__buffers__ = []\n"  # not indented: not part of a class body
    )
    for name in ("A", "B", "C", "D"):
        assert parsed(source, name) == old_regex_declarations(source, name), name
    assert parsed(source, "A") == ["weight", "bias", "running_mean"]
    assert parsed(source, "C") == ["b"]


def _rewrite(src: Path, dst: Path, edit: dict[str, bytes], first: dict[str, bytes]) -> Path:
    """``src`` with the entries in ``edit`` replaced and those in ``first`` put before all."""
    with zipfile.ZipFile(src) as old, zipfile.ZipFile(dst, "w") as new:
        for name, data in first.items():
            new.writestr(name, data)
        for info in old.infolist():
            new.writestr(info, edit.get(info.filename, old.read(info)))
    return dst


def test_blank_line_flood_in_archived_code_reads_in_bounded_time(tmp_path: Path) -> None:
    good = jit_save(tiny_clip(seed=4), tmp_path / "good.pt")
    sources = code_files(good)
    # the file holding the root class CLIP: 200k blank (whitespace) lines in its body
    name = next(n for n, s in sources.items() if "class CLIP(" in s)
    header = "class CLIP(Module):\n"
    source = sources[name].replace(header, header + " \n" * 200_000)
    crafted = _rewrite(good, tmp_path / "crafted.pt", {name: source.encode()}, {})

    start = time.perf_counter()
    state = read_clip_state_dict(crafted)
    elapsed = time.perf_counter() - start
    assert elapsed < BOUND_S, f"{elapsed:.1f} s"
    assert_same(state, read_clip_state_dict(good))


def test_many_entries_archive_reads_in_bounded_time(tmp_path: Path) -> None:
    good = jit_save(tiny_clip(seed=5), tmp_path / "good.pt")
    junk = {f"j{i}/data.pkl": b"" for i in range(20_000)}  # 20k candidate roots, first
    crafted = _rewrite(good, tmp_path / "crafted.pt", {}, junk)

    start = time.perf_counter()
    state = read_clip_state_dict(crafted)
    elapsed = time.perf_counter() - start
    assert elapsed < BOUND_S, f"{elapsed:.1f} s"
    assert_same(state, read_clip_state_dict(good))


def test_zip_bomb_is_refused_before_unpacking(tmp_path: Path) -> None:
    good = jit_save(tiny_clip(seed=6), tmp_path / "good.pt")
    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(good) as old, zipfile.ZipFile(bomb, "w") as new:
        for info in old.infolist():
            new.writestr(info, old.read(info))
        # 64 MiB of zeros deflate to about 64 kB
        info = zipfile.ZipInfo("bomb/data/9")
        info.compress_type = zipfile.ZIP_DEFLATED
        with new.open(info, "w") as f:
            for _ in range(4):
                f.write(bytes(1 << 24))
    assert bomb.stat().st_size < good.stat().st_size + (1 << 20)

    start = time.perf_counter()
    with pytest.raises(UserError, match="corrupt or truncated") as err:
        read_clip_state_dict(bomb)
    assert time.perf_counter() - start < BOUND_S
    assert "unpacked" in str(err.value) and "\n" not in str(err.value)


# --- Crafted pickles: tensors outside their storage, shared or cyclic containers -------------
#
# Written with the pickle protocol as torch.save / torch.jit.save lay them out: a storage is a
# persistent id, a tensor a call of torch._utils._rebuild_tensor_v2 with the size, stride and
# offset given here (which torch.save itself would never write).

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class Stored:
    """A storage of ``numel`` float32 zeros, pickled as a persistent id."""

    def __init__(self, numel: int, key: str = "0") -> None:
        self.numel, self.key = numel, key


class Viewed:
    """A tensor over a ``Stored``, pickled with any size, stride and offset."""

    def __init__(self, storage: Stored, size: tuple, stride: tuple, offset: int = 0) -> None:
        self.args = (storage, offset, size, stride, False, OrderedDict())

    def __reduce__(self) -> tuple:
        return torch._utils._rebuild_tensor_v2, self.args


class CraftPickler(pickle.Pickler):
    def __init__(self, file: io.BytesIO, legacy: bool) -> None:
        super().__init__(file, protocol=2)
        self.legacy = legacy

    def persistent_id(self, obj: object) -> tuple | None:
        if not isinstance(obj, Stored):
            return None
        pid = ("storage", torch.FloatStorage, obj.key, "cpu", obj.numel)
        return (*pid, None) if self.legacy else pid


def dumps(obj: object, legacy: bool = False) -> bytes:
    out = io.BytesIO()
    CraftPickler(out, legacy).dump(obj)
    return out.getvalue()


def craft(path: Path, layout: str, obj: object, storages: tuple[Stored, ...]) -> Path:
    """``obj`` (its ``Stored`` storages given) in the ``layout`` torch writes: "zip"
    (torch.save), "legacy" (torch.save without zip) or "torchscript" (torch.jit.save; ``obj``
    is then a tree of ``Module`` objects)."""
    if layout == "legacy":
        info = {"protocol_version": 1001, "little_endian": sys.byteorder == "little"}
        parts = [pickle.dumps(v, protocol=2) for v in (LEGACY_MAGIC, 1001, info)]
        parts += [dumps(obj, legacy=True), pickle.dumps([s.key for s in storages], protocol=2)]
        parts += [s.numel.to_bytes(8, "little") + bytes(4 * s.numel) for s in storages]
        path.write_bytes(b"".join(parts))
        return path
    root = "archive" if layout == "zip" else "model"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{root}/data.pkl", dumps(obj))
        archive.writestr(f"{root}/byteorder", sys.byteorder)
        archive.writestr(f"{root}/version", "3\n")
        if layout == "torchscript":
            archive.writestr(f"{root}/constants.pkl", pickle.dumps((), protocol=2))
        for s in storages:
            archive.writestr(f"{root}/data/{s.key}", bytes(4 * s.numel))
    return path


class Module:
    """Pickles as a TorchScript module object, ``__torch__.m.Module`` (see ``torchscript``)."""

    def __init__(self, **attrs: object) -> None:
        self.__dict__.update(attrs)


@pytest.fixture
def torchscript(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let pickle name ``Module`` "__torch__.m Module" as TorchScript names its classes."""
    fake = types.ModuleType("__torch__.m")
    fake.Module = Module
    monkeypatch.setattr(Module, "__module__", "__torch__.m")
    monkeypatch.setitem(sys.modules, "__torch__", types.ModuleType("__torch__"))
    monkeypatch.setitem(sys.modules, "__torch__.m", fake)


def weights(layout: str, tensor: object) -> object:
    """``tensor`` as the CLIP key visual.proj in that layout's object."""
    if layout == "torchscript":
        return Module(visual=Module(proj=tensor))
    return {"visual.proj": tensor}


# size, stride, offset over a storage of 4 float32 (16 bytes)
OUTSIDE = {
    "stride-0-400MB": ((10000, 10000), (0, 0), 0),  # the case: 400 MB from 16 bytes
    "past-the-end": ((10000, 10000), (10000, 1), 0),
    "negative-stride": ((4,), (-1,), 3),
    "negative-offset": ((2,), (1,), -2),
    "overflowing-size": ((1 << 62, 1 << 62), (0, 0), 0),
    "stride-beyond-int64": ((1, 4), (1 << 64, 1), 0),
}


@pytest.mark.parametrize("layout", ["zip", "legacy", "torchscript"])
@pytest.mark.parametrize("case", list(OUTSIDE))
def test_tensor_outside_its_storage_is_refused_naming_its_key(
    tmp_path: Path, torchscript: None, layout: str, case: str
) -> None:
    size, stride, offset = OUTSIDE[case]
    storage = Stored(4)
    obj = weights(layout, Viewed(storage, size, stride, offset))
    path = craft(tmp_path / f"{case}.pt", layout, obj, (storage,))
    assert path.stat().st_size < 1024

    start = time.perf_counter()
    with pytest.raises(UserError, match=r"refused, tensor 'visual\.proj'") as err:
        read_clip_state_dict(path)
    assert time.perf_counter() - start < BOUND_S
    assert f"clip_weights={path}:" in str(err.value) and "\n" not in str(err.value)


def two_data_pkl(path: Path, fillers: int, first: bytes, second: bytes) -> Path:
    """A torch.save-like zip holding two ``archive/data.pkl`` records, ``fillers`` empty
    records before and after them (Python's zipfile reads the second, the last; torch's
    reader searches its sorted names, and which one it finds depends on their number)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns of the duplicate name
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("archive/version", "3\n")
            for i in range(fillers):
                archive.writestr(f"archive/a{i}", b"")
            archive.writestr("archive/data.pkl", first)
            archive.writestr("archive/data.pkl", second)
            for i in range(fillers):
                archive.writestr(f"archive/z{i}", b"")
            archive.writestr("archive/data/0", bytes(16))
    return path


def test_zip_with_two_data_pkl_is_checked_as_torch_load_reads_it(tmp_path: Path) -> None:
    # Python's zipfile and torch's zip reader pick different records of one name: the
    # pickle torch.load would build (16 bytes as 400 MB) must be the one checked.
    storage = Stored(4)
    crafted = dumps(weights("zip", Viewed(storage, (10000, 10000), (0, 0))))
    plain = dumps(weights("zip", Viewed(storage, (4,), (1,))))
    for fillers in range(10):  # an archive where torch's reader finds the crafted one
        path = two_data_pkl(tmp_path / f"two_{fillers}.pt", fillers, crafted, plain)
        if torch._C.PyTorchFileReader(str(path)).get_record("data.pkl") == crafted:
            break
    else:
        pytest.fail("torch's zip reader read the last data.pkl in every archive tried")
    with zipfile.ZipFile(path) as archive:
        assert archive.read("archive/data.pkl") == plain
    assert torch.load(path, weights_only=True)["visual.proj"].shape == (10000, 10000)

    with pytest.raises(UserError, match=r"refused, tensor 'visual\.proj'") as err:
        read_clip_state_dict(path)
    assert f"clip_weights={path}:" in str(err.value) and "\n" not in str(err.value)


def test_stride_0_tensor_of_torch_save_is_refused_by_the_upsampler_loader(
    tmp_path: Path,
) -> None:
    # torch.save writes an expanded tensor as its one-element storage and stride 0: a few
    # bytes stand for as many as the shape asks. A real jbu_one state dict, one weight so.
    state = {"upsampler." + k: v for k, v in JBUOne(feat_dim=64).state_dict().items()}
    key = next(k for k, v in state.items() if v.numel() > 1000)
    state[key] = torch.zeros(1).expand(state[key].shape)
    path = tmp_path / "jbu_one.ckpt"
    torch.save({"state_dict": state}, path)

    with pytest.raises(UserError, match=rf"tensor 'state_dict\.{re.escape(key)}'") as err:
        load_upsampler("jbu_one", path, feat_dim=64)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def nested(depth: int, make: Callable[[object], object], leaf: object) -> object:
    for _ in range(depth):
        leaf = make(leaf)
    return leaf


def identity_calls(depth: int, leaf: bytes) -> bytes:
    """A TorchScript data.pkl, written opcode by opcode, whose module at each of ``depth``
    levels holds its child twice, as ``restore_type_tag(*args)`` with one argument tuple
    ``args = (child, "T")`` fetched twice from the memo. No list, dict or module is fetched
    twice, yet 2**depth paths lead to ``leaf`` (a pickle of one module, run first)."""
    P = pickle

    def text(s: str) -> bytes:
        return P.BINUNICODE + len(s).to_bytes(4, "little") + s.encode()

    def get(index: int) -> bytes:
        return P.LONG_BINGET + index.to_bytes(4, "little")

    def put(index: int) -> bytes:
        return P.LONG_BINPUT + index.to_bytes(4, "little")

    module, tag = 20_000, 20_001  # memo entries clear of the leaf's
    out = [P.PROTO + b"\x02", P.GLOBAL + b"__torch__.m\nModule\n", put(module), P.POP]
    out += [P.GLOBAL + b"torch.jit._pickle\nrestore_type_tag\n", put(tag), P.POP]
    out.append(leaf.removeprefix(P.PROTO + b"\x02").removesuffix(P.STOP))
    for level in range(depth):
        args = 10_000 + level
        out += [text("T"), P.TUPLE2, put(args), P.POP]  # args = (child, "T")
        out += [get(module), P.EMPTY_TUPLE, P.NEWOBJ, P.EMPTY_DICT, P.MARK]  # parent, {...
        for name in ("a", "b"):  # ... "a": tag(*args), "b": tag(*args)}
            out += [text(name), get(tag), get(args), P.REDUCE]
        out += [P.SETITEMS, P.BUILD]
    return b"".join([*out, P.STOP])


SHARED = ["module-dag", "module-cycle", "dict-cycle", "list-dag", "identity-call-dag"]


def shared_or_cyclic(tmp_path: Path, case: str) -> Path:
    """A file under 2 kB of each kind (see SHARED); a DAG 20 levels deep has 2**20 paths."""
    storage = Stored(4)
    leaf = Viewed(storage, (4,), (1,))
    if case == "module-dag":
        obj = nested(20, lambda child: Module(a=child, b=child), Module(w=leaf))
        return craft(tmp_path / "dag.pt", "torchscript", obj, (storage,))
    if case == "module-cycle":
        root = Module(w=leaf)
        root.visual = root
        return craft(tmp_path / "cycle.pt", "torchscript", root, (storage,))
    if case == "dict-cycle":
        top: dict = {"visual.proj": leaf}
        top["model"] = top  # read_clip_state_dict unwraps {"model": ...}
        return craft(tmp_path / "cycle.pt", "zip", top, (storage,))
    if case == "list-dag":
        obj = {"visual.proj": nested(20, lambda child: [child, child], leaf)}
        return craft(tmp_path / "dag.pt", "zip", obj, (storage,))
    path = craft(tmp_path / "calls.pt", "torchscript", Module(w=leaf), (storage,))
    with zipfile.ZipFile(path) as archive:
        data = archive.read("model/data.pkl")
    return _rewrite(path, tmp_path / "dag.pt", {"model/data.pkl": identity_calls(20, data)}, {})


@pytest.mark.timeout(60)  # today's reader loops forever on the dict cycle
@pytest.mark.parametrize("case", SHARED)
def test_shared_or_cyclic_containers_are_refused_in_bounded_time(
    tmp_path: Path, torchscript: None, case: str
) -> None:
    path = shared_or_cyclic(tmp_path, case)
    assert path.stat().st_size < 2048

    start = time.perf_counter()
    with pytest.raises(UserError, match="shared or cyclic containers") as err:
        read_clip_state_dict(path)
    assert time.perf_counter() - start < BOUND_S
    assert f"clip_weights={path}:" in str(err.value) and "\n" not in str(err.value)


def colliding_keys(count: int) -> bytes:
    """A pickled dict of ``count`` int keys, multiples of 2**61 - 1: all hash to 0, so a
    dict takes count**2 / 2 probes to hold them."""
    parts = [pickle.PROTO + b"\x02", pickle.EMPTY_DICT, pickle.MARK]
    for i in range(count):
        key = (i * ((1 << 61) - 1)).to_bytes(12, "little")  # LONG1 is signed: < 2**95
        parts += [pickle.LONG1 + b"\x0c" + key, pickle.BININT1 + b"\x00"]
    return b"".join([*parts, pickle.SETITEMS, pickle.STOP])


def test_dict_keys_whose_hashes_collide_are_refused_in_bounded_time(tmp_path: Path) -> None:
    # 560 kB: Python's own unpickler took 100 s on it here (a quarter of that for half)
    path = tmp_path / "keys.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", colliding_keys(40_000))
        archive.writestr("archive/version", "3\n")

    start = time.perf_counter()
    with pytest.raises(UserError, match="dict key or set member int") as err:
        read_clip_state_dict(path)
    assert time.perf_counter() - start < BOUND_S
    assert f"clip_weights={path}:" in str(err.value) and "\n" not in str(err.value)


# Lengths in a pickle far beyond its file: a bytearray (protocol 5, which Python's
# pure-Python unpickler would make, zeroed, before reading it), a string, a frame.
HUGE_CLAIMS = {
    "bytearray": pickle.PROTO + b"\x05" + pickle.BYTEARRAY8 + (1 << 30).to_bytes(8, "little"),
    "string": pickle.PROTO + b"\x04" + pickle.BINUNICODE8 + (1 << 30).to_bytes(8, "little"),
    "frame": pickle.PROTO + b"\x04" + pickle.FRAME + (1 << 30).to_bytes(8, "little"),
}


def test_crafted_files_are_refused_with_bounded_memory(tmp_path: Path, torchscript: None) -> None:
    # Every crafted file above, and pickles claiming 1 GiB lengths, read in a fresh process
    # after a normal archive: the peak resident memory grows by less than 64 MiB (a 400 MB
    # tensor, a million names or a zeroed 1 GiB bytearray would not fit).
    paths = []
    for case, data in HUGE_CLAIMS.items():
        with zipfile.ZipFile(tmp_path / f"{case}.pt", "w") as archive:
            archive.writestr("archive/data.pkl", data + b"xx" + pickle.STOP)
            archive.writestr("archive/version", "3\n")
        paths.append(tmp_path / f"{case}.pt")
    for case in SHARED:
        (tmp_path / case).mkdir()
        paths.append(shared_or_cyclic(tmp_path / case, case))
    for layout in ("zip", "legacy", "torchscript"):
        for case, (size, stride, offset) in OUTSIDE.items():
            storage = Stored(4)
            obj = weights(layout, Viewed(storage, size, stride, offset))
            paths.append(craft(tmp_path / f"{layout}-{case}.pt", layout, obj, (storage,)))
    good = jit_save(tiny_clip(seed=7), tmp_path / "good.pt")
    script = (
        "import resource, sys\n"
        "from reattn_batch.workers.checkpoint import read_clip_state_dict\n"
        "from reattn_batch.workers.errors import UserError\n"
        "read_clip_state_dict(sys.argv[1])\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "refused = 0\n"
        "for path in sys.argv[2:]:\n"
        "    try:\n"
        "        read_clip_state_dict(path)\n"
        "    except UserError:\n"
        "        refused += 1\n"
        "grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before\n"
        "print(refused, grown // 1024)\n"  # ru_maxrss is in KiB on Linux
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(good), *map(str, paths)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    refused, grown_mib = map(int, done.stdout.split())
    assert refused == len(paths)
    assert grown_mib < 64
