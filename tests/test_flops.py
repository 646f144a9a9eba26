"""benchmarks/flops.py's analytic FLOPs against torch's FlopCounterMode on the real forward:
the encoder (``reattn_batch.workers.encoder.encode_crops``) for every method, and the
upsampler (``upsampled_cosines``) per kind and path, less the terms it cannot see
(UNCOUNTED_UPSAMPLER_TERMS below).

What FlopCounterMode counts: the FLOPs of the matrix products and convolutions the forward
dispatches (aten mm, addmm, bmm, baddbmm, convolution and the fused attention kernels it has
formulas for; multiply-add = 2 FLOPs), nothing else. The analytic model counts the same
kind of work and leaves out softmax, LayerNorm, GELU, the attention scale, residual adds,
the rotations' index shuffles and every other element-wise step, which FlopCounterMode
does not count either: so for the encoder the two must agree EXACTLY (the bound on the
difference is 0), and any product the code runs that the model forgets (or the other way
round) fails here.

Two torch shortcuts must be off for every product to reach an op FlopCounterMode knows:

- nn.MultiheadAttention's inference fast path (``torch._native_multi_head_attention``,
  taken under no_grad in eval mode; no FLOP formula in torch 2.x): blocks 1..11 would count
  nothing for their q/k/v, attention and out_proj. ``torch.backends.mha`` turns it off.
- SDPA's fused CPU kernel (``_scaled_dot_product_flash_attention_for_cpu``, no formula
  either): the QK^T and A V products of blocks 1..11 would be missed. The MATH backend
  runs them as bmm. (On CUDA, flash/efficient attention have formulas.)

The tiny ViT-T-16-test runs for real on the CPU; ViT-B/16 runs on the meta device (the
same architecture and code, shapes only: FLOPs do not depend on the weights' values).
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from pathlib import Path

import open_clip
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from reattn_batch.workers.backbone import Backbone, WeightsIdentity, load_backbone
from reattn_batch.workers.config import METHODS, load_config
from reattn_batch.workers.encoder import encode_crops


def _load_flops_module():
    """benchmarks/flops.py by path: benchmarks/ is a folder of scripts beside the package,
    not on sys.path (the distribution installs reattn_batch only)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "flops.py"
    spec = importlib.util.spec_from_file_location("benchmark_flops", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


_flops = _load_flops_module()
VitShape, encoder_flops, upsampler_flops = (
    _flops.VitShape,
    _flops.encoder_flops,
    _flops.upsampler_flops,
)
upsampler_terms = _flops.upsampler_terms

TINY = VitShape(width=64, mlp=128, layers=12, patch=16, embed=64)
VIT_B = VitShape()


@contextlib.contextmanager
def countable_attention():
    """Route every attention product through ops FlopCounterMode counts (module docstring)."""
    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(before)


def counted_flops(backbone: Backbone, cfg, crops: torch.Tensor) -> int:
    """FlopCounterMode's total for one encode_crops call."""
    with torch.no_grad(), countable_attention(), FlopCounterMode(display=False) as counter:
        encode_crops(backbone, cfg, crops)
    return counter.get_total_flops()


@pytest.fixture(scope="module")
def tiny_backbone() -> Backbone:
    return load_backbone("random", "ViT-T-16-test", seed=3)


@pytest.fixture(scope="module")
def vit_b_on_meta() -> Backbone:
    """ViT-B/16 (ViT-B-16-quickgelu) with parameters on the meta device: no memory, no init."""
    with torch.device("meta"):
        model = open_clip.create_model("ViT-B-16-quickgelu", pretrained=None, device="meta")
    identity = WeightsIdentity("random", "ViT-B-16-quickgelu", "meta", random=True)
    return Backbone(model.eval().requires_grad_(False), identity, "ViT-B-16-quickgelu")


@pytest.mark.parametrize("method", METHODS)
def test_encoder_flops_equal_flop_counter_on_tiny_vit(tiny_backbone, method) -> None:
    cfg = load_config(sets=["clip_model=ViT-T-16-test"], overrides={"method": method})
    crops = torch.randn(1, 3, cfg.crop, cfg.crop, generator=torch.Generator().manual_seed(0))
    assert counted_flops(tiny_backbone, cfg, crops) == encoder_flops(cfg, TINY)


@pytest.mark.parametrize("method", METHODS)
def test_encoder_flops_equal_flop_counter_on_vit_b16(vit_b_on_meta, method) -> None:
    cfg = load_config(overrides={"method": method})
    assert vit_b_on_meta.width == VIT_B.width and vit_b_on_meta.patch_size == VIT_B.patch
    crops = torch.empty(1, 3, cfg.crop, cfg.crop, device="meta")
    assert counted_flops(vit_b_on_meta, cfg, crops) == encoder_flops(cfg, VIT_B)


def test_the_count_scales_with_the_batch_and_the_crop(tiny_backbone) -> None:
    """Two crops count twice one; a 448 crop (784 patches) counts what the model says for
    it: the count follows the real token count, not a constant."""
    cfg = load_config(sets=["clip_model=ViT-T-16-test"], overrides={"method": "reattnclip"})
    one = counted_flops(tiny_backbone, cfg, torch.zeros(1, 3, 224, 224))
    assert counted_flops(tiny_backbone, cfg, torch.zeros(2, 3, 224, 224)) == 2 * one
    big = cfg.replace(crop=448)
    assert counted_flops(tiny_backbone, big, torch.zeros(1, 3, 448, 448)) == encoder_flops(
        big, TINY
    )


# Upsampler terms FlopCounterMode cannot see: the code computes them element-wise (mul,
# addcmul_, sum: no FLOP formula) or with an op it has no formula for.
UNCOUNTED_UPSAMPLER_TERMS = {
    "range logits": "D^2 key dot products as (padded * proj).sum(1), element-wise",
    "adaptive conv": "tap_loop's D^2 addcmul_ per channel (the compiled path too)",
    "Householder QR": "torch.linalg.qr: no formula",
    "query shift": "queries @ shift is a matrix-vector product (aten.mv): no formula",
}


@pytest.mark.parametrize("kind", ["jbu_stack", "jbu_one"])
@pytest.mark.parametrize(
    "path, crop, device",
    [("full", 224, "meta"), ("rank_reduced", 112, "cpu")],  # QR has no meta kernel
)
def test_upsampler_flops_equal_flop_counter_less_element_wise_terms(kind, path, crop, device):
    """upsampled_cosines (SimFeatUp + cosine logits, random 512-d weights): FlopCounterMode
    counts exactly the model's terms less UNCOUNTED_UPSAMPLER_TERMS, which stay a bounded
    share of the model's total (measured 8.6 % jbu_stack / 17 % jbu_one on the full path at
    224, 27 % / 22 % rank-reduced at 112)."""
    from reattn_batch.workers.upsampled_logits import upsampled_cosines
    from reattn_batch.workers.upsampler import JBUOne, JBUStack

    cfg = load_config(overrides={"upsampler_path": path}).replace(crop=crop)
    torch.manual_seed(0)
    upsampler = (JBUOne if kind == "jbu_one" else JBUStack)(512).eval().to(device)
    grid, queries = crop // 16, 8
    source = torch.randn(1, 512, grid, grid, device=device)
    guidance = torch.randn(1, 3, crop, crop, device=device)
    text = torch.nn.functional.normalize(torch.randn(queries, 512, device=device), dim=1)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        upsampled_cosines(upsampler, source, guidance, text, path)
    terms = upsampler_terms(cfg, kind, queries)
    assert sum(terms.values()) == upsampler_flops(cfg, kind, queries)
    uncounted = sum(v for name, v in terms.items() if name in UNCOUNTED_UPSAMPLER_TERMS)
    assert counter.get_total_flops() == sum(terms.values()) - uncounted
    assert 0 < uncounted < 0.3 * sum(terms.values())


def test_rank_reduction_cuts_upsampler_flops() -> None:
    """The rank-reduced path costs under half the full one (the reason it is the default)."""
    full = load_config(overrides={"upsampler_path": "full"})
    reduced = load_config()
    assert upsampler_flops(reduced, "jbu_stack", 8) < 0.5 * upsampler_flops(full, "jbu_stack", 8)
    assert upsampler_flops(full, "bilinear", 8) == 0
