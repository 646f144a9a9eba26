"""Running CLIP's vision transformer up to the last block, with taps (SPEC 2.1).

Blocks are numbered 1..12 as in the paper; ``z(k)`` is the residual stream after
block k, so the last block's input is ``z(11)``. Shapes: B crops, T = 1 + h*w tokens
([CLS] first, then patches row-major), C = width (768 for ViT-B/16).
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclasses.dataclass
class TrunkOutput:
    """What blocks 1..11 leave for the final block.

    z: {k: (B, T, C)} residual streams after block k, for every k asked for.
    attn: {l: (B, T, T)} head-averaged softmax(q k^T s) of block l, for every l asked for.
    """

    z: dict[int, Tensor]
    attn: dict[int, Tensor]


def interpolate_pos_embed(pos: Tensor, grid_h: int, grid_w: int) -> Tensor:
    """Positional embeddings for a grid_h x grid_w patch grid.

    pos: (1 + n*n, C) with an n x n grid (n = 14 for ViT-B/16 at 224).
    Returns (1 + grid_h*grid_w, C). As SegEarth-OV (DINO style): unchanged for the
    native square grid, else bicubic with scale factor (g + 0.1) / n, no antialias.
    """
    n = math.isqrt(pos.shape[0] - 1)
    if grid_h == n and grid_w == n:
        return pos
    cls_pos, patch_pos = pos[:1], pos[1:]
    grid = patch_pos.reshape(1, n, n, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(
        grid.float(),
        scale_factor=((grid_h + 0.1) / n, (grid_w + 0.1) / n),
        mode="bicubic",
    ).to(pos.dtype)
    assert grid.shape[-2:] == (grid_h, grid_w), grid.shape
    return torch.cat([cls_pos, grid.permute(0, 2, 3, 1).reshape(grid_h * grid_w, -1)])


def embed_tokens(visual: nn.Module, images: Tensor) -> Tensor:
    """images (B, 3, H, W), H and W multiples of the patch size -> z(0) (B, T, C)."""
    x = visual.conv1(images)  # (B, C, h, w)
    b, c, h, w = x.shape
    x = x.reshape(b, c, h * w).transpose(1, 2)
    cls = visual.class_embedding.to(x.dtype).expand(b, 1, c)
    x = torch.cat([cls, x], dim=1)
    x = x + interpolate_pos_embed(visual.positional_embedding, h, w).to(x.dtype)
    return visual.ln_pre(x)


def split_heads(x: Tensor, heads: int) -> Tensor:
    """(B, T, C) -> (B, heads, T, C / heads)."""
    b, t, c = x.shape
    return x.reshape(b, t, heads, c // heads).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """(B, heads, T, hd) -> (B, T, heads * hd)."""
    b, h, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, h * d)


def qkv(attn: nn.MultiheadAttention, x_ln: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Block projections of ln_1(z): three (B, heads, T, head_dim) tensors."""
    q, k, v = F.linear(x_ln, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    return tuple(split_heads(t, attn.num_heads) for t in (q, k, v))  # type: ignore[return-value]


def softmax_attention(a: Tensor, b: Tensor) -> Tensor:
    """softmax(a b^T s) over the last axis, s = head_dim^-0.5, computed in fp32.

    a, b: (B, heads, T, hd) -> (B, heads, T, T).
    """
    scale = a.shape[-1] ** -0.5
    return torch.softmax((a.float() @ b.float().transpose(-1, -2)) * scale, dim=-1)


def block_with_attention(
    block: nn.Module, x: Tensor, attn_batch: int | None = None
) -> tuple[Tensor, Tensor]:
    """One standard CLIP block that also returns its head-averaged attention map.

    x: (B, T, C) -> (z_next (B, T, C), attention (b, T, T) in fp32) for the first
    b = ``attn_batch`` images (all if None). The other images' attention runs fused
    (scaled_dot_product_attention, no map materialised), as the plain block does.
    """
    q, k, v = qkv(block.attn, block.ln_1(x))
    b = x.shape[0] if attn_batch is None else min(attn_batch, x.shape[0])
    a = softmax_attention(q[:b], k[:b])
    mixed = a.to(v.dtype) @ v[:b]
    if b < x.shape[0]:
        rest = F.scaled_dot_product_attention(q[b:], k[b:], v[b:])
        mixed = torch.cat([mixed, rest])
    out = block.attn.out_proj(merge_heads(mixed))
    x = x + block.ls_1(out)
    x = x + block.ls_2(block.mlp(block.ln_2(x)))
    return x, a.mean(dim=1)


def run_trunk(
    visual: nn.Module,
    images: Tensor,
    z_layers: set[int] = frozenset(),
    attn_layers: set[int] = frozenset(),
    attn_batch: int | None = None,
) -> TrunkOutput:
    """Blocks 1..11 on (B, 3, H, W) normalised crops.

    z_layers: blocks k whose output z(k) is kept (11 is always kept: the last block's input).
    attn_layers: blocks whose head-averaged attention is kept, for the first ``attn_batch``
    images only (the unrotated ones; all if None).
    """
    blocks = visual.transformer.resblocks
    x = embed_tokens(visual, images)
    z: dict[int, Tensor] = {}
    attn: dict[int, Tensor] = {}
    for index, block in enumerate(blocks[:-1], start=1):
        if index in attn_layers:
            x, attn[index] = block_with_attention(block, x, attn_batch)
        else:
            x = block(x)
        if index in z_layers or index == len(blocks) - 1:
            z[index] = x
    return TrunkOutput(z=z, attn=attn)
