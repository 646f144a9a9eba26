"""`eval` with crop batches pooled across images (issue 9 item 3).

With ``batch_size`` > 1 (CUDA: reattn_batch.workers.batching), an image of 9 crops would pad a
batch of 32 with 23 zero crops. Here crops of consecutive images fill the same
fixed-shape batches instead (only crops of the same shape share a batch: an image
smaller than a crop has smaller crops); each crop's logits go back to its own image,
summed there in that image's global crop order exactly as ``slide_inference`` does,
and an image is finished as soon as its last crop has run. At most ``batch_size``
crops wait, so at most ``batch_size + 1`` images are open at a time.

A crop's logits do not depend on its batch neighbours wherever the model is
batch-position independent (CPU fp32; CUDA with deterministic kernels), so the
predictions equal image-by-image ones there.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch

from reattn_batch.image.segment import Segmentation, finish_segmentation, model_input
from reattn_batch.workers.classes import ClassList
from reattn_batch.workers.segmenter import Segmenter
from reattn_batch.workers.sliding import Box, crop_grid


@dataclasses.dataclass
class _Open:
    """An image whose crops are running: its key, input size, pixels and sums."""

    key: Any
    size: tuple[int, int]
    pixels: torch.Tensor  # (3, h, w) normalised model input
    total: torch.Tensor  # (Q, h, w) float32 logit sums
    count: torch.Tensor  # (h, w) float32
    left: int  # crops not yet run


@torch.no_grad()
def pooled_segmentations(
    segmenter: Segmenter,
    classes: ClassList,
    images: Iterable[tuple[Any, np.ndarray]],
    long_side: int | None,
) -> Iterator[tuple[Any, Segmentation]]:
    """(key, (H, W, 3) uint8 RGB) pairs -> (key, Segmentation) pairs, in input order."""
    batch_size, device, q = segmenter.batch_size, segmenter.device, segmenter.num_queries
    pending: dict[tuple[int, int], list[tuple[_Open, Box]]] = {}  # crop shape -> crops
    opened: list[_Open] = []

    def run(batch: list[tuple[_Open, Box]]) -> None:
        crops = torch.stack([img.pixels[:, b.y0 : b.y1, b.x0 : b.x1] for img, b in batch])
        if len(batch) < batch_size:  # fixed batch shape: pad with zero crops
            pad = crops.new_zeros((batch_size - len(batch), *crops.shape[1:]))
            crops = torch.cat([crops, pad])
        logits = segmenter.crop_logits(crops)
        for (img, b), crop_logit in zip(batch, logits, strict=False):
            img.total[:, b.y0 : b.y1, b.x0 : b.x1] += crop_logit
            img.count[b.y0 : b.y1, b.x0 : b.x1] += 1
            img.left -= 1

    def finished() -> Iterator[tuple[Any, Segmentation]]:
        while opened and opened[0].left == 0:
            img = opened.pop(0)
            mean = img.total / img.count
            yield img.key, finish_segmentation(segmenter, classes, mean, img.size)

    for key, rgb in images:
        pixels = model_input(rgb, long_side)
        height, width = pixels.shape[-2:]
        boxes = crop_grid(height, width, segmenter.cfg.crop, segmenter.cfg.stride)
        img = _Open(
            key=key,
            size=rgb.shape[:2],
            pixels=pixels,
            total=torch.zeros((q, height, width), dtype=torch.float32, device=device),
            count=torch.zeros((height, width), dtype=torch.float32, device=device),
            left=len(boxes),
        )
        opened.append(img)
        for box in boxes:  # the image's global crop order
            queue = pending.setdefault(box.shape, [])
            queue.append((img, box))
            if len(queue) == batch_size:
                run(pending.pop(box.shape))
        yield from finished()
    for queue in pending.values():
        run(queue)
    yield from finished()
