"""The block task: one Dask task per output block (SPEC 3.1).

It reads its native window plus halo, resamples it to the model grid (from global
coordinates), runs the global crops that touch its model region in fixed-size
batches on the worker's cached model, averages their logits, resamples them back to
its native box, post-processes, writes its own region of the store durably (fsync)
and returns; the driver then records the block as done (store/records.py). No task
reads another's logits.
"""

from __future__ import annotations

import dataclasses
import time
import traceback
from typing import Any

import numpy as np
import torch

from reattn_batch import store
from reattn_batch.blocks.reading import BlockInput, native_valid
from reattn_batch.grid.grids import BlockGrid
from reattn_batch.report import Clock, TimedSegmenter, model_facts
from reattn_batch.scene import SceneInfo
from reattn_batch.store import NODATA
from reattn_batch.workers.classes import ClassList
from reattn_batch.workers.errors import UserError
from reattn_batch.workers.model_cache import segmenter_for
from reattn_batch.workers.model_spec import ModelSpec
from reattn_batch.workers.postprocess import labels_from_logits
from reattn_batch.workers.sliding import Box, accumulate_logits


@dataclasses.dataclass(frozen=True)
class BlockTask:
    """The payload every block task of a run gets besides its index; small and picklable."""

    scene: SceneInfo
    model: ModelSpec
    classes: ClassList
    grid: BlockGrid
    store: str  # absolute path of the label store (workers may run elsewhere)
    save_confidence: bool
    torch_threads: int = 0  # intra-op threads for the model (0: leave the worker's setting)
    progress_topic: str | None = None  # Dask event topic for crop progress (None: silent)


@dataclasses.dataclass(frozen=True)
class BlockResult:
    """What a block task did. ``phases``: its seconds by report phase (reattn_batch.report):
    load (model from the worker cache, waiting for pixels, the nodata mask), model
    (crop forward passes), post (resampling, labels), write (store and record);
    ``facts``: device, dtype and batch_size of the segmenter it ran on."""

    index: int
    pixels: int  # native pixels in the block
    crops: int  # crops run (all-nodata crops skipped)
    crops_touching: int  # crops touching the block's model region
    crops_owned: int  # crops run whose centre lies in this block's native box
    seconds: float
    phases: dict[str, float] = dataclasses.field(default_factory=dict)
    facts: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class BlockFailure:
    """A block task that raised, returned as a value: Dask then logs no "Compute Failed"
    with a traceback on the worker, and the driver turns it into one line."""

    index: int
    error_type: str
    message: str  # the exception's text (a UserError's is the whole line to show)
    user_error: bool  # a UserError (bad input): its message stands alone
    traceback: str  # for --debug


def run_block(task: BlockTask, index: int, queries: np.ndarray) -> BlockResult | BlockFailure:
    """Compute and write block ``index``; returns what it did, or how it failed."""
    try:
        return compute_block(task, index, queries)
    except Exception as exc:
        return BlockFailure(
            index=index,
            error_type=type(exc).__name__,
            message=str(exc),
            user_error=isinstance(exc, UserError),
            traceback=traceback.format_exc(),
        )


class CropProgress:
    """Reports crops examined / crops touching of block ``index`` of ``store`` (``pixels``
    native pixels) to the driver (a Dask event on ``topic``), at most every ``every``
    seconds; silent outside a worker."""

    def __init__(
        self,
        topic: str | None,
        store: str,
        index: int,
        total: int,
        pixels: int,
        every: float = 0.5,
    ) -> None:
        self.store, self.index, self.total, self.every = store, index, total, every
        self.pixels = pixels
        self.done = 0
        self.last = time.monotonic()
        self.worker = None
        if topic:
            try:
                from distributed import get_worker

                self.worker = get_worker()
            except ValueError:  # not in a worker (a direct call)
                self.worker = None
        self.topic = topic

    def step(self) -> None:
        self.done += 1
        now = time.monotonic()
        if self.worker is not None and now - self.last >= self.every:
            self.last = now
            self.worker.log_event(
                self.topic,
                {
                    "store": self.store,
                    "block": self.index,
                    "crops": self.done,
                    "of": self.total,
                    "pixels": self.pixels,
                },
            )


def compute_block(task: BlockTask, index: int, queries: np.ndarray) -> BlockResult:
    """Compute and write block ``index``; returns what it did (raises on failure)."""
    start = time.perf_counter()
    block = task.grid.block_at(index)
    if task.torch_threads and torch.get_num_threads() != task.torch_threads:
        torch.set_num_threads(task.torch_threads)  # Dask sets OMP_NUM_THREADS=1 in workers
    clock = Clock()
    with clock.phase("load"):
        segmenter = TimedSegmenter(segmenter_for(task.model, queries))
        touching = task.grid.crops_touching(block.model)
        block_input = BlockInput(task.scene, task.grid.model_grid, block)
    crops: list[Box] = []
    height, width = block.native.shape
    progress = CropProgress(task.progress_topic, task.store, index, len(touching), height * width)

    def keep(crop: Box) -> bool:  # waits for the crop's rows; skips all-nodata crops
        progress.step()  # crops before this one have run or are in the current batch
        with clock.phase("load"):
            has_data = block_input.crop_has_data(crop)
        if has_data:
            crops.append(crop)
        return has_data

    try:
        total, count = accumulate_logits(
            segmenter, block_input.pixels, block_input.origin, touching, block.model, keep
        )
        with clock.phase("load"):
            valid_out = native_valid(block, block_input)
    finally:
        block_input.close()
    clock.add("model", segmenter.model_seconds)
    post = time.perf_counter()
    mean = total / count  # NaN where no crop ran (all-nodata surroundings)
    grid = task.grid.model_grid
    if not grid.is_native:
        native = block.native
        mean = grid.to_native.bilinear(
            mean,
            origin=(block.model.y0, block.model.x0),
            target_rows=(native.y0, native.y1),
            target_cols=(native.x0, native.x1),
        )
    cfg = task.model.cfg
    labels, confidence = labels_from_logits(
        mean,
        task.classes.query_class,
        len(task.classes.synonyms),
        cfg.logit_scale,
        cfg.prob_thd,
        task.classes.background_index,
    )
    labels = labels.cpu().numpy()
    nodata = ~valid_out | torch.isnan(mean).any(dim=0).cpu().numpy()
    labels[nodata] = NODATA
    conf = None
    if task.save_confidence:
        conf = np.floor(confidence.cpu().numpy() * 254 + 0.5).astype(np.uint8)
        conf[nodata] = NODATA
    clock.add("post", time.perf_counter() - post)
    with clock.phase("write"):
        # durable before returning: the driver records the block done only after this returns
        store.write_block(task.store, block.native.y0, block.native.x0, labels, conf, durable=True)
    return BlockResult(
        index=index,
        pixels=height * width,
        crops=len(crops),
        crops_touching=len(touching),
        crops_owned=sum(task.grid.owner_of(crop) == index for crop in crops),
        seconds=time.perf_counter() - start,
        phases=clock.seconds,
        facts=model_facts(segmenter),
    )
