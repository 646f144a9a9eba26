"""benchmarks/flops.py's analytic encoder FLOPs against torch's FlopCounterMode on the real
forward (``reattn_batch.workers.encoder.encode_crops``), for every method.

What FlopCounterMode counts: the FLOPs of the matrix products and convolutions the forward
dispatches (aten mm, addmm, bmm, baddbmm, convolution and the fused attention kernels it has
formulas for; multiply-add = 2 FLOPs), nothing else. The analytic model counts the same
kind of work and leaves out softmax, LayerNorm, GELU, the attention scale, residual adds,
the rotations' index shuffles and every other element-wise step, which FlopCounterMode
does not count either: so the two must agree EXACTLY (the bound on the difference is 0),
and any product the code runs that the model forgets (or the other way round) fails here.

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
from reattn_batch.workers.backbone import Backbone, WeightsIdentity, load_backbone
from reattn_batch.workers.config import METHODS, load_config
from reattn_batch.workers.encoder import encode_crops
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode


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


def test_rank_reduction_cuts_upsampler_flops() -> None:
    """The analytic upsampler model (not yet checked against FlopCounterMode: see
    benchmarks/flops.py) says the rank-reduced path costs under half the full one."""
    full = load_config(overrides={"upsampler_path": "full"})
    reduced = load_config()
    assert upsampler_flops(reduced, "jbu_stack", 8) < 0.5 * upsampler_flops(full, "jbu_stack", 8)
    assert upsampler_flops(full, "bilinear", 8) == 0
