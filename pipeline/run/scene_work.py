"""One scene's share of a run, once the cluster is known (SPEC 3.4, 3.5): the memory guard
and final block grid, the store created (or reopened for ``resume``), the blocks still to
compute, and what its finished blocks did. ``run`` opens one; a regional job opens many,
whose blocks share one submission window (blocks/submit.py).

    open_scene_work   guard, store, todo        (the driver, before the scene's blocks,
                                                 holding the store's lock: store/lock.py)
    SceneWork.add     a finished block           (its record; the counters)
    SceneWork.finish  store complete, summary    (after its last block)
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reattn_batch import store
from reattn_batch.blocks.task import BlockResult, BlockTask
from reattn_batch.grid.grids import BlockGrid
from reattn_batch.run.cluster import ClusterInfo
from reattn_batch.run.fingerprint import RUN_KEYS, WORKER_KEYS, run_attrs
from reattn_batch.run.guard import (
    Source,
    check_block_memory,
    feature_channels,
    fits_worker,
    guard_batch_size,
    model_bytes,
)
from reattn_batch.run.plan import Plan, block_grid
from reattn_batch.run.request import SceneRequest
from reattn_batch.run.summary import RunSummary, finish
from reattn_batch.settings import AUTO_BLOCK
from reattn_batch.store.create import Found, found_at
from reattn_batch.store.lock import FileLock, lock_path
from reattn_batch.store.records import RunRecords

log = logging.getLogger(__name__)


@dataclasses.dataclass
class SceneWork:
    """A scene whose store is ready: the block task payload, the blocks to compute and,
    as they finish, their counters. ``out`` is the store's absolute path."""

    request: SceneRequest
    task: BlockTask
    fingerprint: str
    todo: list[int]
    done_before: int  # blocks with a completion record when the run started
    in_flight_before: int  # started by an earlier run that stopped, not finished
    records: RunRecords
    crops: int = 0
    crops_touching: int = 0
    crops_owned: int = 0
    pixels: int = 0
    finished: int = 0  # blocks of ``todo`` that finished in this run
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    facts: dict[str, Any] = dataclasses.field(default_factory=dict)
    started: float = dataclasses.field(default_factory=time.monotonic)

    @property
    def out(self) -> str:
        return self.task.store

    @property
    def grid(self) -> BlockGrid:
        return self.task.grid

    @property
    def remaining(self) -> int:
        return len(self.todo) - self.finished

    def add(self, result: BlockResult) -> None:
        """Block ``result.index`` returned: its data is durable, so it gets its record."""
        self.records.done(result.index)
        self.finished += 1
        self.crops += result.crops
        self.crops_touching += result.crops_touching
        self.crops_owned += result.crops_owned
        self.pixels += result.pixels
        for phase, value in result.phases.items():
            self.seconds[phase] = self.seconds.get(phase, 0.0) + value
        self.facts = self.facts or result.facts

    def finish(self, text_seconds: dict[str, float] | None = None) -> RunSummary:
        """Every block is done: flush the records, mark the store complete, summarise.
        ``text_seconds``: the text task's phases, added to this scene's (``run``)."""
        self.records.flush()
        seconds = dict(self.seconds)
        for phase, value in (text_seconds or {}).items():
            seconds[phase] = seconds.get(phase, 0.0) + value
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = self.pixels / 1e6 / elapsed
        finish(
            self.out,
            todo=len(self.todo),
            done=self.done_before,
            in_flight=self.in_flight_before,
            crops_run=self.crops,
            crops_total=self.crops_touching,
            megapixels_per_second=rate,
        )
        return RunSummary(
            out=self.request.out,
            blocks=len(self.grid),
            computed=len(self.todo),
            skipped=self.done_before,
            crops=self.crops,
            megapixels_per_second=rate,
            crops_in_scene=self.crops_owned,
            seconds=seconds,
            facts=self.facts,
            block_size=self.grid.block,
        )


def open_scene_work(
    request: SceneRequest,
    layout: Plan,
    *,
    weights: dict,
    fingerprint: str,
    info: ClusterInfo,
    precision: Callable[[], str],
    lock: FileLock,
) -> SceneWork:
    """Guard the block size against the workers' memory, then create the store (or reopen
    it for ``request.resume``); nothing is written when the guard refuses. ``precision``
    gives the precision the workers run in (asked after the guard). ``lock``: the store's
    lock (``store.lock_store(request.out)``), taken by the caller before and held until
    the scene ends, so that no other run reads or writes the store meanwhile."""
    scene = layout.scene
    out = str(Path(request.out).absolute())  # workers may run elsewhere
    if not (lock.held and lock.path == lock_path(out)):
        raise ValueError(f"open_scene_work needs the lock of {out} held, got {lock!r}")
    memory = {
        "queries": len(request.classes.queries),
        "batch": guard_batch_size(request.model, len(request.classes.queries), info.gpu_resources),
        "upsampler": request.model.upsampler,
        "worker_limit": info.worker_memory_limit,
        "workers": info.workers,
        "source": Source.of(scene),
        "model": model_bytes(request.model.cfg.clip_model),
        "channels": feature_channels(request.model.cfg),
    }
    layout = dataclasses.replace(layout, grid=_final_grid(request, layout, memory))
    grid = layout.grid
    need = check_block_memory(grid, **memory)
    log.info("block task memory estimate %.2f GiB", need.total / 2**30)
    done = store.prepare(
        out,
        store.StoreLayout(scene.geobox, with_confidence=request.settings.save_confidence),
        attrs=run_attrs(request, layout, weights, fingerprint, precision()),
        class_names=request.classes.names,
        blocks=grid.counts,
        overwrite=request.overwrite,
        resume=request.resume,
        background_index=request.classes.background_index,
        run_keys=RUN_KEYS,
        worker_keys=WORKER_KEYS,
    )
    todo = [i for i in range(len(grid)) if i not in done]
    in_flight = store.started_blocks(out) - done  # started by a run that stopped, unfinished
    if request.resume:
        log.info(
            "resuming %s: %d of %d blocks done; recomputing %d that were in flight when "
            "the last run stopped, computing %d never started",
            out, len(done), len(grid), len(in_flight), len(todo) - len(in_flight),
        )  # fmt: skip
    log.info(
        "scene %s: %dx%d px at %.3g -> model grid %dx%d at %.3g; %d blocks of %d px "
        "(%d to do), %d crops; out %s",
        scene.path, scene.width, scene.height, scene.gsd, grid.model_grid.shape[1],
        grid.model_grid.shape[0], layout.model_gsd, len(grid), grid.block, len(todo),
        grid.crop_count, out,
    )  # fmt: skip
    task = BlockTask(
        scene=scene,
        model=request.model,
        classes=request.classes,
        grid=grid,
        store=out,
        save_confidence=request.settings.save_confidence,
        torch_threads=info.torch_threads,
    )
    return SceneWork(
        request=request,
        task=task,
        fingerprint=fingerprint,
        todo=todo,
        done_before=len(done),
        in_flight_before=len(in_flight),
        records=RunRecords(out),
    )


def _final_grid(request: SceneRequest, layout: Plan, memory: dict) -> BlockGrid:
    """The block grid this run uses: a resumed store's recorded block size (its completion
    records are per block; labels do not depend on it), else ``block_size`` with ``auto``
    resolved within the memory guard."""
    out = Path(request.out)
    if request.resume and found_at(out) is Found.OUR_STORE:
        recorded = store.read_attrs(out).get("block_size")
        if isinstance(recorded, int) and recorded > 0:
            asked = request.settings.block_size
            if asked not in (recorded, AUTO_BLOCK):
                log.warning(
                    "--resume: using the store's block size %d px, not --block-size %s",
                    recorded, asked,
                )  # fmt: skip
            return dataclasses.replace(layout.grid, block=recorded)
    fits = functools.partial(fits_worker, **memory)
    return block_grid(
        layout.grid.model_grid, request.settings.block_size, request.model.cfg, fits=fits
    )
