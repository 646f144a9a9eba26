"""Rotation re-indexing U_r (SPEC 2.3).

A crop rotated by r degrees (``torch.rot90`` counter-clockwise, k = r / 90 quarter
turns over the last two axes) yields its patch tokens in the rotated grid's
row-major order. U_r puts them back in the unrotated order, so that row/column i of
every rotated similarity map relates the same ground patch i.
"""

from __future__ import annotations

import torch
from torch import Tensor


def rotate(images: Tensor, degrees: int) -> Tensor:
    """(..., H, W) -> the same rotated counter-clockwise by ``degrees`` (a multiple of 90)."""
    return torch.rot90(images, k=degrees // 90, dims=(-2, -1))


def unrotate_order(grid_h: int, grid_w: int, degrees: int) -> Tensor:
    """Index map U_r for a grid_h x grid_w patch grid (of the UNROTATED crop).

    Returns a LongTensor ``order`` of length grid_h * grid_w such that
    ``rotated_tokens[:, order]`` lists the rotated crop's patch tokens in the unrotated
    row-major order: ``order[i]`` is where ground patch i sits in the rotated sequence.
    """
    ground = torch.arange(grid_h * grid_w).reshape(grid_h, grid_w)
    # position p of the rotated sequence holds ground patch rotated_ids[p]
    rotated_ids = rotate(ground, degrees).reshape(-1)
    return torch.argsort(rotated_ids)


def to_ground_order(patch_tokens: Tensor, grid_h: int, grid_w: int, degrees: int) -> Tensor:
    """(B, N, C) patch tokens of a crop rotated by ``degrees`` -> (B, N, C) in ground order."""
    if degrees % 360 == 0:
        return patch_tokens
    order = unrotate_order(grid_h, grid_w, degrees).to(patch_tokens.device)
    return patch_tokens[:, order]
