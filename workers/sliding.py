"""Sliding-window crop inference over an image or a block (SPEC 2.7, 3.1).

The crop grid is SegEarth-OV's: crops of ``crop`` px at ``stride``, the last one
clamped to the edge (an image smaller than a crop is one crop of its own size).
Logits of overlapping crops are summed in ONE global crop order (row-major) and
divided by the count. Crops run in batches of a fixed size (the last batch padded
with zero crops), so a crop's logits never depend on which batch it ran in: that is
what makes a block-by-block scene identical to a whole-scene pass.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from reattn_batch.workers.segmenter import Segmenter


@dataclasses.dataclass(frozen=True, order=True)
class Box:
    """A half-open pixel rectangle [y0, y1) x [x0, x1) in some grid's coordinates."""

    y0: int
    x0: int
    y1: int
    x1: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.y1 - self.y0, self.x1 - self.x0

    def intersects(self, other: Box) -> bool:
        return (
            self.y0 < other.y1 and other.y0 < self.y1 and self.x0 < other.x1 and other.x0 < self.x1
        )

    def shift(self, dy: int, dx: int) -> Box:
        return Box(self.y0 + dy, self.x0 + dx, self.y1 + dy, self.x1 + dx)


def crop_starts(size: int, crop: int, stride: int) -> list[int]:
    """Start offsets of the crops along one axis of ``size`` px (last clamped to the edge)."""
    count = max(size - crop + stride - 1, 0) // stride + 1
    return [max(min(i * stride + crop, size) - crop, 0) for i in range(count)]


def crop_grid(height: int, width: int, crop: int, stride: int) -> list[Box]:
    """All crops of a height x width image, in the global (row-major) order."""
    ys, xs = crop_starts(height, crop, stride), crop_starts(width, crop, stride)
    return [Box(y, x, min(y + crop, height), min(x + crop, width)) for y in ys for x in xs]


@torch.no_grad()
def accumulate_logits(
    segmenter: Segmenter,
    pixels: Tensor,
    origin: tuple[int, int],
    boxes: Sequence[Box],
    target: Box,
    keep: Callable[[Box], bool] | None = None,
) -> tuple[Tensor, Tensor]:
    """Sum crop logits over ``target``.

    pixels: (3, h, w) normalised window whose top-left pixel has global coordinates
    ``origin``; it must contain every box. boxes: crops in global coordinates, in
    global order. target: the global region to accumulate. keep: called for each crop,
    in order, just before it joins a batch (it may wait for the crop's pixels to be
    read); a crop for which it returns False is skipped.
    Returns (sum (Q, th, tw) float32, count (th, tw) float32) on the segmenter's device.
    """
    oy, ox = origin
    q = segmenter.num_queries
    device = segmenter.device
    total = torch.zeros((q, *target.shape), dtype=torch.float32, device=device)
    count = torch.zeros(target.shape, dtype=torch.float32, device=device)
    batch_size = segmenter.batch_size

    def run(batch: list[Box]) -> None:
        crops = torch.stack(
            [pixels[:, b.y0 - oy : b.y1 - oy, b.x0 - ox : b.x1 - ox] for b in batch]
        )
        if len(batch) < batch_size:  # fixed batch shape: pad with zero crops
            pad = crops.new_zeros((batch_size - len(batch), *crops.shape[1:]))
            crops = torch.cat([crops, pad])
        logits = segmenter.crop_logits(crops)
        for box, crop_logit in zip(batch, logits, strict=False):
            y0, y1 = max(box.y0, target.y0), min(box.y1, target.y1)
            x0, x1 = max(box.x0, target.x0), min(box.x1, target.x1)
            src = crop_logit[:, y0 - box.y0 : y1 - box.y0, x0 - box.x0 : x1 - box.x0]
            total[:, y0 - target.y0 : y1 - target.y0, x0 - target.x0 : x1 - target.x0] += src
            count[y0 - target.y0 : y1 - target.y0, x0 - target.x0 : x1 - target.x0] += 1

    batch: list[Box] = []
    for box in boxes:  # global order; batches are filled in that order
        if not box.intersects(target) or (keep is not None and not keep(box)):
            continue
        batch.append(box)
        if len(batch) == batch_size:
            run(batch)
            batch = []
    if batch:
        run(batch)
    return total, count


def slide_inference(segmenter: Segmenter, pixels: Tensor) -> Tensor:
    """Mean crop logits over a whole image: pixels (3, H, W) -> (Q, H, W) float32."""
    height, width = pixels.shape[-2:]
    crop, stride = segmenter.cfg.crop, segmenter.cfg.stride
    whole = Box(0, 0, height, width)
    total, count = accumulate_logits(
        segmenter, pixels, (0, 0), crop_grid(height, width, crop, stride), whole
    )
    return total / count
