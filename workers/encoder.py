"""Dense CLIP features of crops under a method (SPEC 2.2-2.4).

``encode_crops`` is the whole image side up to the upsampler: blocks 1..11 (with the
three rotated copies batched alongside for ReAttnCLIP, which need blocks 1..11 only),
the middle-layer maps, the method's block 12, ln_post and proj.
"""

from __future__ import annotations

import dataclasses

import torch
from reattn_batch.workers.attention import (
    ReAttnParts,
    final_block,
    fused_patch_attention,
    mean_cls_row,
    rotated_similarity,
)
from reattn_batch.workers.backbone import Backbone
from reattn_batch.workers.config import MethodConfig
from reattn_batch.workers.rotation import rotate, to_ground_order
from reattn_batch.workers.vit import TrunkOutput, run_trunk
from torch import Tensor


@dataclasses.dataclass
class DenseFeatures:
    """patches: (B, D, h, w) patch features after ln_post and proj (D = 512 for ViT-B/16);
    cls: (B, D) the modified block's [CLS] token after ln_post and proj."""

    patches: Tensor
    cls: Tensor


def _trunk_passes(
    backbone: Backbone, cfg: MethodConfig, images: Tensor
) -> tuple[TrunkOutput, dict[int, TrunkOutput]]:
    """Run blocks 1..11 on the crops and, for ReAttnCLIP's X X^T, on their rotations.

    Rotations whose crops share a shape run as one batch (all four for square crops);
    the unrotated crops come first, and only their attention maps are kept.
    Returns (unrotated pass, {degrees: pass whose z holds the rotated crops' streams}).
    """
    batch = images.shape[0]
    reattn = cfg.method == "reattnclip"
    need_pp = reattn and cfg.patch_patch == "reattn"
    attn_layers: set[int] = set()
    if need_pp:
        attn_layers |= set(cfg.fuse_layers)
    if reattn and cfg.cls_row == "reattn":
        attn_layers |= set(cfg.cls_layers)
    z_layers = set(cfg.xx_layers) if need_pp else set()
    rotations = [r for r in cfg.rotations if r != 0] if need_pp else []

    groups: dict[tuple[int, int], list[int]] = {tuple(images.shape[-2:]): [0]}
    for degrees in rotations:
        groups.setdefault(tuple(rotate(images[:1, :1], degrees).shape[-2:]), []).append(degrees)

    passes: dict[int, TrunkOutput] = {}
    for members in groups.values():
        stacked = torch.cat([rotate(images, d) for d in members])
        out = run_trunk(backbone.visual, stacked, z_layers, attn_layers, attn_batch=batch)
        for i, degrees in enumerate(members):
            z = {k: t[i * batch : (i + 1) * batch] for k, t in out.z.items()}
            passes[degrees] = TrunkOutput(z=z, attn=out.attn if degrees == 0 else {})
    return passes[0], passes


def _reattn_parts(
    backbone: Backbone,
    cfg: MethodConfig,
    ground: TrunkOutput,
    passes: dict[int, TrunkOutput],
    grid: tuple[int, int],
) -> ReAttnParts:
    patch_patch = cls_row = None
    if cfg.patch_patch == "reattn":
        ln1 = backbone.visual.transformer.resblocks[-1].ln_1
        xs = {}
        for degrees in cfg.rotations:
            for k in cfg.xx_layers:
                x = passes[degrees].z[k]
                if cfg.xx_norm == "ln1":
                    x = ln1(x)
                elif cfg.xx_norm == "l2":
                    x = x / x.norm(dim=-1, keepdim=True)
                xs[(degrees, k)] = to_ground_order(x[:, 1:], *grid, degrees)
        weights = dict(zip(cfg.rotations, cfg.rotation_weights, strict=True))
        s_rot = rotated_similarity(xs, weights, scale=backbone.width**-0.5)
        maps = {layer: ground.attn[layer] for layer in cfg.fuse_layers}
        betas = dict(zip(cfg.fuse_layers, cfg.betas, strict=True))
        patch_patch = fused_patch_attention(s_rot, maps, cfg.alpha, betas)
    if cfg.cls_row == "reattn":
        cls_row = mean_cls_row({layer: ground.attn[layer] for layer in cfg.cls_layers})
    return ReAttnParts(patch_patch=patch_patch, cls_row=cls_row, zero_cls_col=cfg.cls_col == "zero")


def encode_crops(backbone: Backbone, cfg: MethodConfig, images: Tensor) -> DenseFeatures:
    """images: (B, 3, H, W) CLIP-normalised crops, H and W multiples of the patch size."""
    p = backbone.patch_size
    grid = (images.shape[-2] // p, images.shape[-1] // p)
    ground, passes = _trunk_passes(backbone, cfg, images)
    parts = (
        _reattn_parts(backbone, cfg, ground, passes, grid) if cfg.method == "reattnclip" else None
    )
    visual = backbone.visual
    tokens = final_block(visual.transformer.resblocks[-1], ground.z[11], cfg, parts)
    out = visual.ln_post(tokens) @ visual.proj  # (B, T, D)
    patches = out[:, 1:].reshape(out.shape[0], *grid, -1).permute(0, 3, 1, 2)
    return DenseFeatures(patches=patches, cls=out[:, 0])
