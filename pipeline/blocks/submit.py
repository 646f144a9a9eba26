"""Bounded submission of a run's block tasks (SPEC 3.4): at most a window of tasks is on
the scheduler at a time (``as_completed``), so a region of 100k blocks does not flood it.
The text embeddings are computed once, by a task of their own, and handed to every block."""

from __future__ import annotations

import dataclasses
import hashlib
import operator
import time
import uuid
from typing import Any

import numpy as np

from pipeline.blocks.task import BlockTask, run_block
from pipeline.grid.grids import BlockGrid
from pipeline.run.bounded import bounded_as_completed, window_for
from pipeline.run.cluster import ClusterInfo
from pipeline.run.progress import RunProgress
from pipeline.store.records import RunRecords
from workers.errors import UserError
from workers.model_cache import model_parts
from workers.text import query_embeddings


@dataclasses.dataclass(frozen=True)
class Computed:
    """What the submitted blocks did: crops run, crops they touch, crops of the scene
    that hold data (each once: the block owning its centre counts it), MP/s, seconds by
    report phase summed over tasks (the text task's included), the segmenter's facts."""

    crops: int
    crops_touching: int
    megapixels_per_second: float
    crops_in_scene: int = 0
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    facts: dict[str, Any] = dataclasses.field(default_factory=dict)


def embed_queries_timed(spec, queries: list[str]) -> tuple[np.ndarray, dict[str, float]]:
    """The text task: (Q, D) unit text embeddings with this worker's cached model, and
    its seconds: ``load`` (the model, from the worker cache) and ``text``."""
    start = time.perf_counter()
    backbone, _ = model_parts(spec)
    loaded = time.perf_counter()
    embeddings = query_embeddings(backbone, queries).numpy()
    return embeddings, {"load": loaded - start, "text": time.perf_counter() - loaded}


def block_result(future, grid: BlockGrid, out: str):
    """A finished block's result; a failed block fails the run with one line that names
    its window, leaving the store resumable (finished blocks keep their records)."""
    try:
        return future.result()
    except UserError as exc:
        raise UserError(f"{exc}; finished blocks are kept in {out}: rerun with --resume") from exc
    except Exception as exc:
        index = int(str(future.key).rsplit("-", 1)[-1])
        box = grid.block_at(index).native
        reason = str(exc).splitlines()[0] if str(exc) else ""
        raise UserError(
            f"block {index} (rows {box.y0}:{box.y1}, cols {box.x0}:{box.x1}) failed: "
            f"{type(exc).__name__}: {reason}; finished blocks are kept in {out}: "
            "fix the cause and rerun with --resume"
        ) from exc


def run_token(store: str) -> str:
    """8 hex characters unique to one run into ``store``: its absolute path and a fresh
    uuid (a later run into the same store, e.g. ``--resume``, gets new keys too)."""
    return hashlib.sha256(f"{store}|{uuid.uuid4().hex}".encode()).hexdigest()[:8]


def submit_blocks(
    client, info: ClusterInfo, task: BlockTask, *, todo: list[int], done: int, key: str
) -> Computed:
    """Run blocks ``todo`` through a bounded window; ``done`` blocks are already finished.

    Task keys are ``block-{key}-{run}-{index}``: ``key`` (the run fingerprint) names the
    settings, ``run`` (:func:`run_token`) this run into this store, so two runs with the same
    settings on one scheduler (two stores, or a retry while old tasks still run) never share
    a task, while a task's key stays stable within its run."""
    run = run_token(task.store)
    resources = {"GPU": 1} if info.gpu_resources else None
    text = client.submit(embed_queries_timed, task.model, task.classes.queries, resources=resources)
    queries = client.submit(operator.itemgetter(0), text)

    records = RunRecords(task.store)

    def submit(index: int):
        records.started(index)
        return client.submit(
            run_block, task, index, queries, resources=resources, key=f"block-{key}-{run}-{index}"
        )

    finished = bounded_as_completed(submit, todo, window_for(info.total_threads))
    crops = touched = owned = 0
    seconds: dict[str, float] = {}
    facts: dict[str, Any] = {}
    with RunProgress(len(task.grid), done_blocks=done) as progress:
        try:
            for future in finished:
                result = block_result(future, task.grid, task.store)
                records.done(result.index)  # its data is durable: the task has returned
                crops += result.crops
                touched += result.crops_touching
                owned += result.crops_owned
                for phase, value in result.phases.items():
                    seconds[phase] = seconds.get(phase, 0.0) + value
                facts = facts or result.facts
                progress.advance(result.pixels)
        finally:
            records.flush()  # finished blocks keep their records, whatever stopped the run
        if todo:
            for phase, value in text.result()[1].items():
                seconds[phase] = seconds.get(phase, 0.0) + value
        return Computed(crops, touched, progress.megapixels_per_second, owned, seconds, facts)
