"""The memory guard (issue "resilient jobs"): refuse settings whose block task would not
fit in a worker's memory, before anything is computed.

A block task holds, in float32 (4 bytes): the logit sum, the mean and, after resampling
to native, the logits again and the softmax probabilities, each Q x block pixels
(Q = text queries); plus one batch of crop logits (batch x Q x crop^2), the upsampled
features of a batch (batch x C x crop^2, SimFeatUp only, about three copies live
inside the upsampler; C = tokens per crop, 196 for 224 crops of 16 px patches, on the
rank-reduced path, 512 with ``upsampler_path: full``), the image window, and the
model's weights. ``batch`` is the resolved crop batch (``batch_size: auto`` resolved
as the workers will: :func:`guard_batch_size`).
"""

from __future__ import annotations

import dataclasses

from pipeline.grid.grids import BlockGrid
from pipeline.store.layout import CHUNK
from workers.errors import UserError

FLOAT = 4
MODEL_BYTES = 1.2e9  # ViT-B/16 fp32 weights, activations of a batch, text tower
HEADROOM = 0.8  # use at most this share of a worker's memory limit
FEAT_DIM = 512  # CLIP ViT-B/16 feature channels (the full upsampler path)
PATCH = 16


def feature_channels(cfg) -> int:
    """Channels the upsampler carries: tokens per crop on the rank-reduced path, else 512."""
    if cfg.upsampler_path == "rank_reduced":
        return min(FEAT_DIM, (cfg.crop // PATCH) ** 2)
    return FEAT_DIM


def guard_batch_size(spec, queries: int, gpu_workers: bool) -> int:
    """The crop batch a block task will run: ``cfg.batch_size``, or ``auto`` resolved by
    workers.batching for the workers' device (CPU 1; on CUDA the size this machine's GPU
    gives, or the cap where the client has no GPU: an upper bound)."""
    import torch

    from workers.batching import CUDA_BATCH_CAP, resolve_batch_size
    from workers.segmenter import resolve_device

    cfg = spec.cfg
    device = resolve_device(spec.device) if not gpu_workers else torch.device("cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        return cfg.batch_size or CUDA_BATCH_CAP
    return resolve_batch_size(device, cfg, queries, spec.upsampler != "bilinear")


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
    grid: BlockGrid, *, queries: int, batch: int, upsampler: str, channels: int = FEAT_DIM
) -> BlockMemory:
    """Peak bytes of the largest (first, full) block task of ``grid``; ``channels``: of
    the upsampled features (:func:`feature_channels`)."""
    block = grid.block_at(0)
    model_px = block.model.shape[0] * block.model.shape[1]
    native_px = block.native.shape[0] * block.native.shape[1]
    crop_px = grid.crop * grid.crop
    crop_box_px = block.crop_box.shape[0] * block.crop_box.shape[1]
    read_px = block.read.shape[0] * block.read.shape[1]
    logits = FLOAT * queries * (2 * model_px + 2 * native_px)
    features = 3 * batch * channels * crop_px * FLOAT if upsampler != "bilinear" else 0
    crops = FLOAT * batch * queries * crop_px + features
    image = read_px * (3 + 1 + 3 * FLOAT) + crop_box_px * (1 + 2 * 3 * FLOAT)
    return BlockMemory(logits=logits, crops=crops, image=image, model=int(MODEL_BYTES))


def fits_worker(
    grid: BlockGrid,
    *,
    queries: int,
    batch: int,
    upsampler: str,
    worker_limit: int | None,
    channels: int = FEAT_DIM,
) -> bool:
    """Whether a block task of ``grid`` fits in HEADROOM of ``worker_limit`` (None: yes)."""
    need = estimate_block_memory(
        grid, queries=queries, batch=batch, upsampler=upsampler, channels=channels
    )
    return not worker_limit or need.total <= HEADROOM * worker_limit


def check_block_memory(
    grid: BlockGrid,
    *,
    queries: int,
    batch: int,
    upsampler: str,
    worker_limit: int | None,
    channels: int = FEAT_DIM,
) -> BlockMemory:
    """Raise a UserError with a fitting --block-size when a block task would not fit."""
    need = estimate_block_memory(
        grid, queries=queries, batch=batch, upsampler=upsampler, channels=channels
    )
    if not worker_limit or need.total <= HEADROOM * worker_limit:
        return need
    suggestion = None
    size = grid.block - CHUNK
    while size >= CHUNK:
        smaller = dataclasses.replace(grid, block=size)
        if (
            estimate_block_memory(
                smaller, queries=queries, batch=batch, upsampler=upsampler, channels=channels
            ).total
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
