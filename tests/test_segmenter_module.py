"""The model is one torch module (issue: the model as a module): it moves, casts, hooks,
compiles and round-trips its state like any ``nn.Module``, and the method inside it is a
module another model can reuse."""

from __future__ import annotations

import pytest
import torch

from reattn_batch.api.model import load_model
from reattn_batch.workers.errors import InputError, ReattnError
from reattn_batch.workers.methods import BASE_METHODS, METHODS, REATTN_BASES, Method
from reattn_batch.workers.segmenter import Segmenter
from reattn_batch.workers.text import query_embeddings

TINY = {"clip_weights": "random", "upsampler": "bilinear", "clip_model": "ViT-T-16-test"}
SPEC_METHODS = ["vanilla", "maskclip", "sclip", "clearclip", "segearth-ov", "reattnclip"]


@pytest.fixture(scope="module")
def model() -> Segmenter:
    return load_model(device="cpu", classes="building,road", **TINY)


@pytest.fixture(scope="module")
def crops() -> torch.Tensor:
    return torch.randn(2, 3, 224, 200, generator=torch.Generator().manual_seed(0))


def test_the_registry_is_the_spec_table_and_every_entry_is_a_module_class():
    assert list(METHODS) == SPEC_METHODS  # SPEC 2.2's table, in its order
    assert list(BASE_METHODS) == SPEC_METHODS[:5]
    assert REATTN_BASES == ("maskclip", "sclip", "clearclip", "segearth-ov")  # SPEC 2.3
    for name, cls in METHODS.items():
        assert issubclass(cls, Method) and issubclass(cls, torch.nn.Module) and cls.name == name


def test_forward_is_the_logits_and_the_model_holds_its_parts(model, crops):
    assert isinstance(model, torch.nn.Module)
    children = dict(model.named_children())
    assert set(children) >= {"clip", "method"} and model.upsampler is None
    assert model.queries.shape[0] == len(model.classes.queries) == 3  # background first
    with torch.no_grad():
        out = model(crops)
    assert out.shape == (2, 3, 224, 200) and out.dtype == torch.float32
    torch.testing.assert_close(model.crop_logits(crops), out, rtol=0, atol=0)


def test_state_dict_round_trips_into_a_model_of_other_weights(model, crops):
    other = load_model(device="cpu", random_seed=1, classes="building,road", **TINY)
    with torch.no_grad():
        assert not torch.equal(other(crops), model(crops))
        other.load_state_dict(model.state_dict())
        assert torch.equal(other(crops), model(crops))
    assert "queries" in model.state_dict()


def test_half_casts_every_weight_and_stays_close_to_fp32(model, crops):
    half = load_model(device="cpu", classes="building,road", **TINY).half()
    assert {p.dtype for p in half.parameters()} == {torch.float16}
    with torch.no_grad():
        got, want = half(crops), model(crops)
    assert got.dtype == torch.float32  # logits are returned in fp32
    assert (got.argmax(1) == want.argmax(1)).float().mean() > 0.9
    assert (got - want).abs().max() < 0.05


def test_a_forward_hook_on_the_method_sees_the_dense_features(model, crops):
    seen = []
    handle = model.method.register_forward_hook(lambda m, args, out: seen.append(out))
    try:
        with torch.no_grad():
            model(crops)
    finally:
        handle.remove()
    (features,) = seen
    dim = model.clip.visual.proj.shape[1]  # 64 for the tiny architecture (512 for ViT-B/16)
    assert features.patches.shape == (2, dim, 14, 13)  # 224x200 padded to 224x208: 14x13


def test_torch_compile_traces_the_whole_module_and_gives_the_same_logits(model, crops):
    compiled = torch.compile(model, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(crops), model(crops), rtol=1e-5, atol=1e-5)


def test_the_method_module_plugs_into_another_clip_vit(model, crops):
    """A method is called with a vision tower, so another model can use it as it is."""
    method = METHODS["segearth-ov"]()
    visual = model.clip.visual
    padded = torch.nn.functional.pad(crops, (4, 4))
    with torch.no_grad():
        dense = method(visual, padded)
    dim = visual.proj.shape[1]
    assert dense.patches.shape == (2, dim, 14, 13) and dense.cls.shape == (2, dim)


def test_to_moves_buffers_and_the_model_follows_its_device():
    moved = load_model(device="cpu", classes="building", **TINY).to("meta")
    assert moved.device.type == "meta" and moved.queries.device.type == "meta"
    assert all(p.device.type == "meta" for p in moved.parameters())


def test_load_model_validates_every_keyword_and_names_it():
    with pytest.raises(InputError, match="`upsampler`"):
        load_model(upsampler="bicubic", **{k: v for k, v in TINY.items() if k != "upsampler"})
    with pytest.raises(ReattnError, match="alpah"):
        load_model(alpah=0.3, **TINY)
    with pytest.raises(InputError, match="`method`"):
        load_model(method="nope", **TINY)


def test_set_queries_embeds_other_classes(model):
    embeddings = query_embeddings(model.backbone, ["tree"])
    fresh = load_model(device="cpu", **TINY)
    assert fresh.queries.shape[0] == 0
    fresh.set_queries(embeddings)
    assert torch.equal(fresh.queries, embeddings)
