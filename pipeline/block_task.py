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
from concurrent.futures import ThreadPoolExecutor

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


class BlockInput:
    """A block's crop region on the model grid, read in horizontal strips on a background
    thread so that the first crop rows run on the model while later rows are still being
    read: I/O overlaps compute inside the one task of a block.

    pixels: (3, h, w) CLIP-normalised, valid: (h, w) bool; [0, 0] is global model pixel
    ``origin`` = (crop_box.y0, crop_box.x0). Strips of ``STRIP_ROWS`` model rows.
    """

    STRIP_ROWS = 256

    def __init__(self, job: JobSpec, block: Block) -> None:
        self.job, self.block = job, block
        box = block.crop_box
        self.origin = (box.y0, box.x0)
        self.pixels = torch.zeros((3, *box.shape), dtype=torch.float32)
        self.valid = np.zeros(box.shape, dtype=bool)
        edges = [*range(box.y0, box.y1, self.STRIP_ROWS), box.y1]
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="block-read")
        self._strips = [
            (y0, self._pool.submit(self._load, y0, y1))
            for y0, y1 in zip(edges, edges[1:], strict=False)
        ]

    def _load(self, y0: int, y1: int) -> None:
        """Read, resample (from global coordinates) and normalise model rows y0..y1."""
        grid, box = self.job.grid.model_grid, self.block.crop_box
        cols = (box.x0, box.x1)
        if grid.is_native:
            rgb, valid = read_with_retries(self.job.scene, Box(y0, box.x0, y1, box.x1))
            image = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1)
        else:
            r0, r1 = grid.rows.sources_for_targets(y0, y1, from_model=False)
            c0, c1 = grid.cols.sources_for_targets(*cols, from_model=False)
            rgb, valid = read_with_retries(self.job.scene, Box(r0, c0, r1, c1))
            image = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1)
            span = ((y0, y1), cols)
            image = resample_bilinear(
                image, (r0, c0), grid.rows, grid.cols, *span, from_model=False
            )
            valid = resample_nearest(valid, (r0, c0), grid.rows, grid.cols, *span, from_model=False)
        rows = slice(y0 - box.y0, y1 - box.y0)
        self.pixels[:, rows] = normalise_chw(image)
        self.valid[rows] = valid

    def wait_rows(self, y1: int) -> None:
        """Block until every strip starting above global model row ``y1`` is in."""
        for y0, future in self._strips:
            if y0 < y1:
                future.result()  # re-raises a read failure

    def crop_has_data(self, crop: Box) -> bool:
        """Whether ``crop`` holds any valid pixel (waits for its rows first)."""
        self.wait_rows(crop.y1)
        oy, ox = self.origin
        return bool(self.valid[crop.y0 - oy : crop.y1 - oy, crop.x0 - ox : crop.x1 - ox].any())

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def native_valid(job: JobSpec, block: Block, block_input: BlockInput) -> np.ndarray:
    """Validity of the block's native output box (nodata and alpha -> False)."""
    if job.grid.model_grid.is_native:  # the crop region covers the block
        box, (oy, ox) = block.native, block_input.origin
        return block_input.valid[box.y0 - oy : box.y1 - oy, box.x0 - ox : box.x1 - ox]
    _, valid = read_with_retries(job.scene, block.native)  # from GDAL's block cache
    return valid


def run_block(job: JobSpec, index: int, queries: np.ndarray) -> BlockResult:
    """Compute and write block ``index``; returns what it did."""
    start = time.perf_counter()
    block = job.grid.block_at(index)
    store.mark_block_started(job.store, index)
    if job.torch_threads and torch.get_num_threads() != job.torch_threads:
        torch.set_num_threads(job.torch_threads)  # Dask sets OMP_NUM_THREADS=1 in workers
    segmenter = segmenter_for(job.model, queries)
    touching = job.grid.crops_touching(block.model)
    block_input = BlockInput(job, block)
    crops: list[Box] = []

    def keep(crop: Box) -> bool:  # waits for the crop's rows; skips all-nodata crops
        if block_input.crop_has_data(crop):
            crops.append(crop)
            return True
        return False

    try:
        total, count = accumulate_logits(
            segmenter, block_input.pixels, block_input.origin, touching, block.model, keep
        )
        valid_out = native_valid(job, block, block_input)
    finally:
        block_input.close()
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
    nodata = ~valid_out | torch.isnan(mean).any(dim=0).cpu().numpy()
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
