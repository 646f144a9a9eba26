"""The block task: one Dask task per output block (SPEC 3.1).

It reads its native window plus halo, resamples it to the model grid (from global
coordinates), runs the global crops that touch its model region in fixed-size
batches on the worker's cached model, averages their logits, resamples them back to
its native box, post-processes, writes its own region of the store and only then
records the block as done. No task reads another's logits.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time

import numpy as np
import torch

from pipeline import store
from pipeline.grids import Block, BlockGrid
from pipeline.resample import resample_bilinear, resample_nearest
from pipeline.scene import SceneInfo, WindowReadError, read_window
from workers.classes import ClassList
from workers.model_cache import segmenter_for
from workers.model_spec import ModelSpec
from workers.postprocess import labels_from_logits
from workers.segmenter import normalise_chw
from workers.sliding import Box, accumulate_logits

log = logging.getLogger(__name__)

NODATA = 255
READ_ATTEMPTS = 4  # remote reads: a first try and three retries
READ_BACKOFF_S = 1.0  # doubled after each failed try


@dataclasses.dataclass(frozen=True)
class JobSpec:
    """Everything a block task needs besides its index; small and picklable."""

    scene: SceneInfo
    model: ModelSpec
    classes: ClassList
    grid: BlockGrid
    store: str
    save_confidence: bool
    torch_threads: int = 0  # intra-op threads for the model (0: leave the worker's setting)


@dataclasses.dataclass(frozen=True)
class BlockResult:
    index: int
    pixels: int  # native pixels in the block
    crops: int  # crops run (all-nodata crops skipped)
    crops_touching: int  # crops touching the block's model region
    seconds: float


def read_with_retries(scene: SceneInfo, box: Box) -> tuple[np.ndarray, np.ndarray]:
    """read_window with retries and exponential backoff for transient (remote) failures.

    A local read that fails (corrupt tiles) fails at once; a remote one that keeps
    failing raises the last WindowReadError, which names the window.
    """
    delay = float(os.environ.get("REATTN_BATCH_READ_BACKOFF", READ_BACKOFF_S))
    for attempt in range(1, READ_ATTEMPTS + 1):
        try:
            return read_window(scene, box.y0, box.x0, *box.shape)
        except WindowReadError as exc:
            if not exc.remote or attempt == READ_ATTEMPTS:
                raise
            log.warning("read of %s failed (try %d/%d), retrying in %.0fs: %s",
                        scene.uri, attempt, READ_ATTEMPTS, delay, exc.cause)  # fmt: skip
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")


def _local(box: Box, origin: Box) -> tuple[slice, slice]:
    return slice(box.y0 - origin.y0, box.y1 - origin.y0), slice(
        box.x0 - origin.x0, box.x1 - origin.x0
    )


def model_input(job: JobSpec, block: Block) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Read the block's window once and put its crop region on the model grid.

    Returns (pixels (3, h, w) normalised, valid (h, w) on the model grid, both with
    [0, 0] at global model pixel (crop_box.y0, crop_box.x0); native_valid: the
    validity of the block's native output box).
    """
    read = block.read
    rgb, valid = read_with_retries(job.scene, read)
    native_valid = valid[_local(block.native, read)]
    image = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1)
    grid = job.grid.model_grid
    box = block.crop_box
    if grid.is_native:
        rows, cols = _local(box, read)
        return normalise_chw(image[:, rows, cols]), valid[rows, cols], native_valid
    span = ((box.y0, box.y1), (box.x0, box.x1))
    origin = (read.y0, read.x0)
    image = resample_bilinear(image, origin, grid.rows, grid.cols, *span, from_model=False)
    valid = resample_nearest(valid, origin, grid.rows, grid.cols, *span, from_model=False)
    return normalise_chw(image), valid, native_valid


def _crop_has_data(valid: np.ndarray, origin: tuple[int, int], crop: Box) -> bool:
    return bool(
        valid[
            crop.y0 - origin[0] : crop.y1 - origin[0], crop.x0 - origin[1] : crop.x1 - origin[1]
        ].any()
    )


def run_block(job: JobSpec, index: int, queries: np.ndarray) -> BlockResult:
    """Compute and write block ``index``; returns what it did."""
    start = time.perf_counter()
    block = job.grid.block_at(index)
    store.mark_block_started(job.store, index)
    if job.torch_threads and torch.get_num_threads() != job.torch_threads:
        torch.set_num_threads(job.torch_threads)  # Dask sets OMP_NUM_THREADS=1 in workers
    segmenter = segmenter_for(job.model, queries)
    pixels, valid, native_valid = model_input(job, block)
    origin = (block.crop_box.y0, block.crop_box.x0)
    touching = job.grid.crops_touching(block.model)
    crops = [c for c in touching if _crop_has_data(valid, origin, c)]
    total, count = accumulate_logits(
        segmenter, pixels.to(segmenter.device), origin, crops, block.model
    )
    mean = total / count  # NaN where no crop ran (all-nodata surroundings)
    grid = job.grid.model_grid
    if not grid.is_native:
        native = block.native
        mean = resample_bilinear(
            mean,
            (block.model.y0, block.model.x0),
            grid.rows,
            grid.cols,
            (native.y0, native.y1),
            (native.x0, native.x1),
            from_model=True,
        )
    cfg = job.model.cfg
    labels, confidence = labels_from_logits(
        mean,
        job.classes.query_class,
        len(job.classes.synonyms),
        cfg.logit_scale,
        cfg.prob_thd,
        job.classes.background_index,
    )
    labels = labels.cpu().numpy()
    nodata = ~native_valid | torch.isnan(mean).any(dim=0).cpu().numpy()
    labels[nodata] = NODATA
    conf = None
    if job.save_confidence:
        conf = np.floor(confidence.cpu().numpy() * 254 + 0.5).astype(np.uint8)
        conf[nodata] = NODATA
    store.write_block(job.store, block.native.y0, block.native.x0, labels, conf)
    store.mark_block_done(job.store, index)
    height, width = block.native.shape
    return BlockResult(
        index=index,
        pixels=height * width,
        crops=len(crops),
        crops_touching=len(touching),
        seconds=time.perf_counter() - start,
    )
