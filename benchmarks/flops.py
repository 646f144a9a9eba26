"""Analytic FLOPs of one crop through ``Segmenter.forward`` (multiply-add = 2 FLOPs).

Counted: matrix products and convolutions (the work a GPU's tensor cores do); softmax,
LayerNorm, GELU and other element-wise work is left out. Encoder and upsampler apart:

- encoder: patch embedding, blocks 1..11 once per trunk pass (ReAttnCLIP: one pass per
  rotation, SPEC 2.3), block 12 under the method, ln_post/proj; ReAttnCLIP also its
  X X^T maps (|K| x |rotations| of N x N x width);
- upsampler (SimFeatUp, ``upsampler_terms``): per x2 step the range projection, the
  range logits, the kernel fixup, the bicubic resize (two dense matrix products, as the
  code runs it) and the adaptive convolution over K channels (K = 512, or N tokens on
  the rank-reduced path, plus its QR and basis products), then the outer 512x512 fixup
  (full path only) and the query dot products.

tests/test_flops.py checks both against torch's FlopCounterMode on the real forward.
"""

from __future__ import annotations

import dataclasses

from reattn_batch.workers.config import MethodConfig
from reattn_batch.workers.methods import BASE_METHODS

KEY_DIM = 32  # JBU range projection width
BICUBIC_TAPS = 16


@dataclasses.dataclass(frozen=True)
class VitShape:
    """width d, mlp hidden m, blocks L, patch p, output dim e (ViT-B/16: 768, 3072, 12, 16, 512)."""

    width: int = 768
    mlp: int = 3072
    layers: int = 12
    patch: int = 16
    embed: int = 512


def block_flops(tokens: int, width: int, mlp: int) -> int:
    """One standard block: q/k/v, scores, A v, out_proj, MLP."""
    t, d = tokens, width
    return 2 * t * 3 * d * d + 2 * t * t * d * 2 + 2 * t * d * d + 2 * t * d * mlp * 2


def final_block_flops(cfg: MethodConfig, tokens: int, width: int, mlp: int) -> int:
    """Block 12 under the method (maps of the base, A v, out_proj, MLP where kept)."""
    t, d = tokens, width
    base = BASE_METHODS[cfg.attention_base]  # the registry: its maps and residual
    maps = base.attention_maps
    if cfg.method == "reattnclip" and cfg.patch_patch == "reattn" and cfg.cls_row == "reattn":
        maps = 0  # A_refine replaces the base's maps (cls_col zero) or keeps few entries
    identity = base.attention_maps == 0 and cfg.method != "reattnclip"
    av = 0 if identity else 2 * t * t * d
    flops = 2 * t * 3 * d * d + maps * 2 * t * t * d + av + 2 * t * d * d
    if base.keeps_residual:
        flops += 2 * t * d * mlp * 2
    return flops


def trunk_passes(cfg: MethodConfig) -> int:
    """Passes of blocks 1..11: one per rotation for ReAttnCLIP's X X^T, else one."""
    if cfg.method == "reattnclip" and cfg.patch_patch == "reattn":
        return len(cfg.rotations)
    return 1


def encoder_flops(cfg: MethodConfig, vit: VitShape = VitShape()) -> int:
    """FLOPs of one crop's encoder (all trunk passes, block 12, proj)."""
    grid = cfg.crop // vit.patch
    n = grid * grid
    t = n + 1
    per_pass = 2 * n * 3 * vit.patch**2 * vit.width + (vit.layers - 1) * block_flops(
        t, vit.width, vit.mlp
    )
    flops = trunk_passes(cfg) * per_pass + final_block_flops(cfg, t, vit.width, vit.mlp)
    flops += 2 * t * vit.width * vit.embed
    if cfg.method == "reattnclip" and cfg.patch_patch == "reattn":
        flops += len(cfg.xx_layers) * len(cfg.rotations) * 2 * n * n * vit.width
    return flops


def upsampler_terms(
    cfg: MethodConfig, kind: str, queries: int, vit: VitShape = VitShape()
) -> dict[str, int]:
    """FLOPs of one crop's SimFeatUp and cosine logits, by term, as the code computes them
    (``reattn_batch.workers.upsampler`` and ``upsampled_logits``); {} for bilinear.

    Per x2 step (source K x h x w -> K x H x W, H = 2h, P = H W, window D = 2r + 1):
    the range projection (two 1x1 convs), the range logits (D^2 dot products of 32-d keys,
    element-wise in the code), the kernel fixup (two 1x1 convs), the bicubic resize with
    reflect padding as two dense matrix products ``rows @ (source @ cols^T)`` (every source
    row and column, not only the 4 cubic taps), and the adaptive convolution (D^2 taps per
    pixel and channel, element-wise multiply-adds). Then the outer 512x512 fixup and the
    query dot products (full path), or A = F M^T, the Householder QR of A^T and the basis
    products (rank-reduced path, K = N tokens).
    """
    if kind == "bilinear":
        return {}
    radius = 5 if kind == "jbu_one" else 3
    taps = (2 * radius + 1) ** 2
    grid = cfg.crop // vit.patch
    n, c = grid * grid, vit.embed
    reduced = cfg.upsampler_path == "rank_reduced" and n < c
    k = n if reduced else c
    terms = dict.fromkeys(
        ("range projection", "range logits", "kernel fixup", "bicubic resize", "adaptive conv"),
        0,
    )
    side = grid
    for _ in range(4):
        h, side = side, side * 2
        p, padded = side * side, side + 2 * radius
        terms["range projection"] += 2 * p * (3 * KEY_DIM + KEY_DIM * KEY_DIM)
        terms["range logits"] += 2 * p * taps * KEY_DIM
        terms["kernel fixup"] += 2 * p * ((taps + 3) * taps + taps * taps)
        terms["bicubic resize"] += 2 * k * h * h * padded + 2 * k * padded * h * padded
        terms["adaptive conv"] += 2 * p * k * taps
    p = side * side
    if reduced:
        terms["A = F M^T"] = 2 * n * c * c
        terms["Householder QR"] = 4 * c * n * n
        terms["basis products"] = 2 * c * n * (queries + 1) + 2 * p * n * (queries + 1)
        terms["query shift"] = 2 * queries * c
    else:
        terms["outer fixup"] = 2 * p * c * c
        terms["query dots"] = 2 * p * c * queries
    return terms


def upsampler_flops(cfg: MethodConfig, kind: str, queries: int, vit: VitShape = VitShape()) -> int:
    """FLOPs of one crop's SimFeatUp and cosine logits (0 for bilinear): the sum of
    ``upsampler_terms``."""
    return sum(upsampler_terms(cfg, kind, queries, vit).values())
