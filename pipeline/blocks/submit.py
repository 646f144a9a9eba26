"""Bounded submission of a run's block tasks (SPEC 3.4): at most a window of tasks is on
the scheduler at a time (``as_completed``), so a region of 100k blocks does not flood it.
The text embeddings are computed once, by a task of their own, and handed to every block."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import operator
import uuid
from typing import Any

from reattn_batch.blocks.task import BlockFailure, BlockTask, run_block
from reattn_batch.grid.grids import BlockGrid
from reattn_batch.run.bounded import POLL_SECONDS, bounded_as_completed
from reattn_batch.run.cluster import ClusterInfo
from reattn_batch.run.progress import RunProgress
from reattn_batch.run.watch import NoWorkerError, NoWorkerWatch
from reattn_batch.settings import DEFAULT_NO_WORKER_TIMEOUT
from reattn_batch.store.records import RunRecords
from reattn_batch.workers.errors import InputError, UserError
from reattn_batch.workers.model_cache import embed_queries_timed

log = logging.getLogger(__name__)


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


def wait_result(future, tick=None):
    """``future.result()``; with ``tick``, waited for in steps that call ``tick()``: a
    result held only by a worker that died is recomputed, and if no worker can do that
    the no-worker watch in ``tick`` ends the run instead of a gather waiting forever."""
    while True:
        try:
            return future.result(timeout=None if tick is None else POLL_SECONDS)
        except TimeoutError:
            if tick is None:
                raise
            tick()


def block_result(future, grid: BlockGrid, out: str, tick=None):
    """A finished block's result; a failed block fails the run with one line that names
    its window, leaving the store resumable (finished blocks keep their records)."""
    try:
        result = wait_result(future, tick)
    except NoWorkerError:
        raise  # says itself that finished blocks are kept
    except UserError as exc:
        raise InputError(
            f"{exc}; finished blocks are kept in {out}: rerun with resume=True"
        ) from exc
    except Exception as exc:
        index = int(str(future.key).rsplit("-", 1)[-1])
        box = grid.block_at(index).native
        reason = str(exc).splitlines()[0] if str(exc) else ""
        raise InputError(
            f"block {index} (rows {box.y0}:{box.y1}, cols {box.x0}:{box.x1}) failed: "
            f"{type(exc).__name__}: {reason}; finished blocks are kept in {out}: "
            "fix the cause and rerun with resume=True"
        ) from exc
    if isinstance(result, BlockFailure):
        raise failure_error(result, grid, out)
    return result


def failure_error(failure: BlockFailure, grid: BlockGrid, out: str) -> UserError:
    """The one line of a block task that failed (its traceback is logged at DEBUG)."""
    log.debug("block %d failed on the worker:\n%s", failure.index, failure.traceback)
    if failure.user_error:
        kept = f"finished blocks are kept in {out}: rerun with resume=True"
        return InputError(f"{failure.message}; {kept}")
    box = grid.block_at(failure.index).native
    reason = failure.message.splitlines()[0] if failure.message else ""
    return InputError(
        f"block {failure.index} (rows {box.y0}:{box.y1}, cols {box.x0}:{box.x1}) failed: "
        f"{failure.error_type}: {reason}; finished blocks are kept in {out}: "
        "fix the cause and rerun with resume=True"
    )


def run_token(store: str) -> str:
    """8 hex characters unique to one run into ``store``: its absolute path and a fresh
    uuid (a later run into the same store, e.g. ``--resume``, gets new keys too)."""
    return hashlib.sha256(f"{store}|{uuid.uuid4().hex}".encode()).hexdigest()[:8]


def submit_blocks(
    client,
    info: ClusterInfo,
    task: BlockTask,
    *,
    todo: list[int],
    done: int,
    key: str,
    no_worker_timeout: float = DEFAULT_NO_WORKER_TIMEOUT,
) -> Computed:
    """Run blocks ``todo`` through a bounded window; ``done`` blocks are already finished.

    Task keys are ``block-{key}-{run}-{index}``: ``key`` (the run fingerprint) names the
    settings, ``run`` (:func:`run_token`) this run into this store, so two runs with the same
    settings on one scheduler (two stores, or a retry while old tasks still run) never share
    a task, while a task's key stays stable within its run. The run ends with one line once
    no worker could run its tasks for ``no_worker_timeout`` seconds."""
    run = run_token(task.store)
    watch = NoWorkerWatch(client, gpu=info.gpu_resources, timeout=no_worker_timeout, out=task.store)
    topic = f"reattn-progress-{uuid.uuid4().hex[:12]}"
    task = dataclasses.replace(task, progress_topic=topic)
    resources = {"GPU": 1} if info.gpu_resources else None
    text = client.submit(embed_queries_timed, task.model, task.classes.queries, resources=resources)
    queries = client.submit(operator.itemgetter(0), text, resources=resources)

    records = RunRecords(task.store)

    def submit(index: int):
        records.started(index)
        return client.submit(
            run_block, task, index, queries, resources=resources, key=f"block-{key}-{run}-{index}"
        )

    crops = touched = owned = 0
    seconds: dict[str, float] = {}
    facts: dict[str, Any] = {}
    with RunProgress(len(task.grid), done_blocks=done) as progress:

        def on_crops(event) -> None:  # (time, {"block", "crops", "of"}) from a block task
            message = event[1]
            progress.crops(message["block"], message["crops"], message["of"])

        def tick() -> None:
            watch.check()
            progress.tick()

        client.subscribe_topic(topic, on_crops)
        try:
            finished = bounded_as_completed(submit, todo, watch.window, tick=tick)
            for future in finished:
                result = block_result(future, task.grid, task.store, tick)
                records.done(result.index)  # its data is durable: the task has returned
                crops += result.crops
                touched += result.crops_touching
                owned += result.crops_owned
                for phase, value in result.phases.items():
                    seconds[phase] = seconds.get(phase, 0.0) + value
                facts = facts or result.facts
                progress.advance(result.pixels, block=result.index)
        finally:
            records.flush()  # finished blocks keep their records, whatever stopped the run
            client.unsubscribe_topic(topic)
        if todo:
            for phase, value in wait_result(text, tick)[1].items():
                seconds[phase] = seconds.get(phase, 0.0) + value
        return Computed(crops, touched, progress.megapixels_per_second, owned, seconds, facts)
