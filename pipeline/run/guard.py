"""The memory guard (issue "resilient jobs"): refuse settings whose block task would not
fit in a worker's memory, before anything is computed.

A block task holds, in float32 (4 bytes): the logit sum, the mean and, after resampling
to native, the logits again and the softmax probabilities, each Q x block pixels
(Q = text queries); plus one batch of crop logits (batch x Q x crop^2), the upsampled
features of a batch (batch x 512 x crop^2, SimFeatUp only, about three copies live
inside the upsampler), the image window, and the model's weights.
"""

from __future__ import annotations

import dataclasses

from pipeline.grid.grids import BlockGrid
from pipeline.store.layout import CHUNK
from workers.errors import UserError

FLOAT = 4
MODEL_BYTES = 1.2e9  # ViT-B/16 fp32 weights, activations of a batch, text tower
HEADROOM = 0.8  # use at most this share of a worker's memory limit


@dataclasses.dataclass(frozen=True)
class BlockMemory:
    """Estimated peak bytes of one block task, by part."""

    logits: int
    crops: int
    image: int
    model: int

    @property
    def total(self) -> int:
        return self.logits + self.crops + self.image + self.model


def estimate_block_memory(
    grid: BlockGrid, *, queries: int, batch: int, upsampler: str
) -> BlockMemory:
    """Peak bytes of the largest (first, full) block task of ``grid``."""
    block = grid.block_at(0)
    model_px = block.model.shape[0] * block.model.shape[1]
    native_px = block.native.shape[0] * block.native.shape[1]
    crop_px = grid.crop * grid.crop
    crop_box_px = block.crop_box.shape[0] * block.crop_box.shape[1]
    read_px = block.read.shape[0] * block.read.shape[1]
    logits = FLOAT * queries * (2 * model_px + 2 * native_px)
    features = 3 * batch * 512 * crop_px * FLOAT if upsampler != "bilinear" else 0
    crops = FLOAT * batch * queries * crop_px + features
    image = read_px * (3 + 1 + 3 * FLOAT) + crop_box_px * (1 + 2 * 3 * FLOAT)
    return BlockMemory(logits=logits, crops=crops, image=image, model=int(MODEL_BYTES))


def check_block_memory(
    grid: BlockGrid, *, queries: int, batch: int, upsampler: str, worker_limit: int | None
) -> BlockMemory:
    """Raise a UserError with a fitting --block-size when a block task would not fit."""
    need = estimate_block_memory(grid, queries=queries, batch=batch, upsampler=upsampler)
    if not worker_limit or need.total <= HEADROOM * worker_limit:
        return need
    suggestion = None
    size = grid.block - CHUNK
    while size >= CHUNK:
        smaller = dataclasses.replace(grid, block=size)
        if (
            estimate_block_memory(smaller, queries=queries, batch=batch, upsampler=upsampler).total
            <= HEADROOM * worker_limit
        ):
            suggestion = size
            break
        size -= CHUNK
    fix = (
        f"pass --block-size {suggestion}"
        if suggestion
        else "use fewer classes or synonyms, a smaller batch_size, or workers with more memory"
    )
    raise UserError(
        f"a {grid.block} px block with {queries} text queries needs about "
        f"{need.total / 2**30:.1f} GiB but a worker has {worker_limit / 2**30:.1f} GiB: {fix}"
    )
