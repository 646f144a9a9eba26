"""benchmarks/flops.py against a hand computation for the tiny ViT-T-16-test config."""

from __future__ import annotations

from reattn_batch.workers.config import load_config

from benchmarks.flops import VitShape, encoder_flops, upsampler_flops

TINY = VitShape(width=64, mlp=128, layers=12, patch=16, embed=64)


def test_encoder_flops_tiny_segearth_by_hand() -> None:
    cfg = load_config(sets=["clip_model=ViT-T-16-test"], overrides={"method": "segearth-ov"})
    # 224 crop: 196 patches, 197 tokens, width 64, MLP 128.
    embed = 2 * 196 * (3 * 16 * 16) * 64  # 19_267_584; 2 * 197 * 197 * 64 = 4_967_552
    block = 4_841_472 + 9_935_104 + 1_613_824 + 6_455_296  # qkv, qk^T + Av, out, MLP
    final = 4_841_472 + 3 * 4_967_552 + 4_967_552 + 1_613_824  # qkv, qq/kk/vv, Av, out
    proj = 2 * 197 * 64 * 64
    assert encoder_flops(cfg, TINY) == embed + 11 * block + final + proj == 298_509_568


def test_reattn_runs_four_trunk_passes_and_xx_maps() -> None:
    seg = load_config(overrides={"method": "segearth-ov"})
    re = load_config(overrides={"method": "reattnclip"})
    block = 2 * 197 * 768 * (4 * 768 + 2 * 3072) + 4 * 197 * 197 * 768
    trunk = 2 * 196 * 768 * 768 + 11 * block
    final_seg = 2 * 197 * 768 * 768 * 4 + 4 * 2 * 197 * 197 * 768
    final_re = 2 * 197 * 768 * 768 * 4 + 2 * 197 * 197 * 768  # A_refine: only A v
    xx = 12 * 2 * 196 * 196 * 768
    assert encoder_flops(seg) - final_seg == trunk + 2 * 197 * 768 * 512
    assert encoder_flops(re) - final_re - xx == 4 * trunk + 2 * 197 * 768 * 512


def test_rank_reduction_cuts_upsampler_flops() -> None:
    full = load_config(overrides={"upsampler_path": "full"})
    reduced = load_config()
    assert upsampler_flops(reduced, "jbu_stack", 8) < 0.5 * upsampler_flops(full, "jbu_stack", 8)
    assert upsampler_flops(full, "bilinear", 8) == 0
