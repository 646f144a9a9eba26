"""Bounded submission of block tasks (SPEC 3.4), for one scene or for many.

Every block of every scene goes through ONE bounded window (``as_completed``): at most a
window of tasks is on the scheduler at a time, so a region of 100k blocks does not flood
it, and a regional job's scenes follow each other without a gap: the next scene is taken
only once the previous one's blocks are all submitted, while those still run (a job opens
scenes ahead in a thread: regional/runner.py). So at most ``window + 1`` scenes are being
computed at a time, whatever the job's length (the driver's memory stays flat).

The text embeddings are computed once, by a task of their own, for every scene with the
same model and classes, and handed to each block. A failing block fails its scene only:
it submits no more blocks, those already submitted finish and keep their records like
its other finished blocks, and the other scenes go on (``run``, one scene: it ends at
once). Only a cluster that can run nothing (the no-worker watch) ends the whole
submission.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import operator
import time
import uuid
from collections.abc import Callable, Iterable, Iterator

from distributed import Future

from reattn_batch.blocks.task import BlockFailure, BlockTask, run_block
from reattn_batch.grid.grids import BlockGrid
from reattn_batch.run.bounded import POLL_SECONDS, bounded_as_completed
from reattn_batch.run.cluster import ClusterInfo
from reattn_batch.run.progress import RunProgress
from reattn_batch.run.scene_work import SceneWork
from reattn_batch.run.summary import RunSummary
from reattn_batch.run.watch import NoWorkerError, NoWorkerWatch
from reattn_batch.settings import DEFAULT_NO_WORKER_TIMEOUT
from reattn_batch.workers.errors import InputError, StoreError, UserError
from reattn_batch.workers.model_cache import embed_queries_timed

log = logging.getLogger(__name__)

#: What :func:`compute_scenes` reports for each scene: its work, and either its summary
#: (all blocks done, store complete) or the one-line error that failed it.
OnScene = Callable[[SceneWork, RunSummary | None, UserError | None], None]


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
    """A finished block's result; a failed block fails its scene with one line that names
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


@dataclasses.dataclass
class _Open:
    """A scene being computed: its work, the keys' run token, its text task, its futures."""

    work: SceneWork
    task: BlockTask  # the work's, with the run's progress topic
    token: str
    text: Future | None  # None: nothing to compute
    futures: set[Future] = dataclasses.field(default_factory=set)
    error: UserError | None = None


@functools.lru_cache(maxsize=16)
def _identity(model, queries: tuple[str, ...]) -> str:
    """What decides the text embeddings: the model's settings and the queries."""
    return json.dumps([model.as_dict(), list(queries)], sort_keys=True, default=str)


class _TextTasks:
    """One text-embedding task per distinct (model, classes), shared by every scene."""

    def __init__(self, client, resources: dict | None) -> None:
        self.client, self.resources = client, resources
        self.tasks: dict[str, tuple[Future, Future]] = {}
        self.unreported: set[str] = set()  # text tasks whose seconds no scene has yet

    @staticmethod
    def _key(work: SceneWork) -> str:
        model, classes = work.task.model, work.task.classes
        return _identity(model, tuple(classes.queries))

    def queries(self, work: SceneWork) -> Future:
        """The future of the query embeddings for ``work``'s model and classes."""
        key = self._key(work)
        if key in self.tasks and self.tasks[key][1].status in ("error", "cancelled"):
            del self.tasks[key]  # a failed text task fails its scenes only: try again
        if key not in self.tasks:
            text = self.client.submit(
                embed_queries_timed, work.task.model, work.task.classes.queries,
                resources=self.resources,
            )  # fmt: skip
            queries = self.client.submit(operator.itemgetter(0), text, resources=self.resources)
            self.tasks[key] = (text, queries)
            self.unreported.add(key)
        return self.tasks[key][1]

    def seconds_once(self, work: SceneWork, tick) -> dict[str, float]:
        """The text task's phases for the first scene of its (model, classes) to finish,
        so they are counted once; ``{}`` after that, and for scenes that computed nothing."""
        key = self._key(work)
        if key not in self.unreported or not work.todo:
            return {}
        self.unreported.discard(key)
        return wait_result(self.tasks[key][0], tick)[1]


def _finish(scene: _Open, text_seconds: dict[str, float] | None = None) -> RunSummary | None:
    """Mark the scene's store complete; a store that cannot be written fails its scene."""
    try:
        return scene.work.finish(text_seconds)
    except Exception as exc:  # noqa: BLE001 - the store's trouble fails this scene only
        scene.error = _store_error(scene, "cannot mark the store complete", exc)
        return None


def _store_error(scene: _Open, what: str, exc: Exception) -> UserError:
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    first = reason.splitlines()[0] if reason else ""
    log.debug("%s: %s", scene.work.out, what, exc_info=exc)
    return StoreError(
        f"{scene.work.out}: {what} ({type(exc).__name__}: {first}); "
        "finished blocks are kept: rerun with resume=True"
    )


def compute_scenes(
    client,
    info: ClusterInfo,
    works: Iterable[SceneWork],
    on_scene: OnScene,
    *,
    progress: RunProgress,
    out: str,
    no_worker_timeout: float = DEFAULT_NO_WORKER_TIMEOUT,
    stop_on_failure: bool = False,
) -> None:
    """Compute the blocks ``todo`` of every scene of ``works`` through one bounded window.

    ``works`` is read lazily: the next scene is taken only when the window has room and
    the previous scene's blocks are all submitted. ``on_scene`` is called once per scene,
    as it ends (complete, or failed with its one-line error); ``progress`` (the caller's
    display) is told of each scene and block. ``stop_on_failure`` (one scene, ``run``):
    the first failed scene ends the submission at once, its other tasks released.

    The submission ends with a :class:`NoWorkerError` (naming ``out``) once no worker
    could run its tasks for ``no_worker_timeout`` seconds; open scenes that had failed are
    reported first. Whatever stops it, every open scene's finished blocks keep their
    records, and on an error the tasks still on the scheduler are cancelled.

    Task keys are ``block-{fingerprint}-{run}-{index}``: the run fingerprint names the
    settings, ``run`` (:func:`run_token`) this run into this store, so two runs with the same
    settings on one scheduler (two stores, or a retry while old tasks still run) never share
    a task, while a task's key stays stable within its run."""
    watch = NoWorkerWatch(client, gpu=info.gpu_resources, timeout=no_worker_timeout, out=out)
    topic = f"reattn-progress-{uuid.uuid4().hex[:12]}"
    resources = {"GPU": 1} if info.gpu_resources else None
    texts = _TextTasks(client, resources)
    open_scenes: dict[str, _Open] = {}  # by store path
    owner: dict[str, _Open] = {}  # task key -> its scene

    def tick() -> None:
        watch.check()
        progress.tick()

    def end(scene: _Open, summary: RunSummary | None) -> None:
        try:
            scene.work.records.flush()  # finished blocks keep their records
        except Exception as exc:  # noqa: BLE001 - the store's trouble fails this scene only
            scene.error = scene.error or _store_error(scene, "cannot write its records", exc)
            summary = None
        del open_scenes[scene.work.out]
        if scene.error is not None:
            progress.remove_blocks(scene.work.remaining - len(scene.futures))
        progress.scene_done(failed=scene.error is not None)
        on_scene(scene.work, summary, scene.error)

    def blocks() -> Iterator[tuple[_Open, int]]:
        for work in works:
            task = dataclasses.replace(work.task, progress_topic=topic)
            text = texts.queries(work) if work.todo else None
            scene = _Open(work, task, run_token(work.out), text)
            open_scenes[work.out] = scene
            progress.add_scene(len(work.grid), work.done_before)
            if not work.todo:
                end(scene, _finish(scene))
                continue
            work.started = time.monotonic()  # its MP/s count from its first task
            for index in work.todo:
                if scene.error is not None:
                    break  # a failed scene submits no more blocks
                yield scene, index

    def submit(item: tuple[_Open, int]) -> Future:
        scene, index = item
        scene.work.records.started(index)
        key = f"block-{scene.work.fingerprint}-{scene.token}-{index}"
        future = client.submit(
            run_block, scene.task, index, scene.text, resources=resources, key=key,
        )  # fmt: skip
        scene.futures.add(future)
        owner[key] = scene
        return future

    def on_crops(event) -> None:  # (time, {"store", "block", "crops", "of", "pixels"})
        message = event[1]
        store, block = message.get("store"), message["block"]
        if store in open_scenes:  # not a late event of a block that already ended
            crops, of, pixels = message["crops"], message["of"], message["pixels"]
            progress.crops((store, block), crops, of, pixels)

    def add(scene: _Open, result) -> None:
        try:
            scene.work.add(result)  # its data is durable: the task has returned
        except Exception as exc:  # noqa: BLE001 - a record write failed: this scene only
            scene.error = scene.error or _store_error(scene, "cannot write its records", exc)

    client.subscribe_topic(topic, on_crops)
    failed = True
    try:
        for future in bounded_as_completed(submit, blocks(), watch.window, tick=tick):
            scene = owner.pop(future.key)
            scene.futures.discard(future)
            work = scene.work
            index = int(str(future.key).rsplit("-", 1)[-1])
            progress.forget((work.out, index))
            if scene.error is not None:  # a later block of a failed scene: keep its record
                if future.status == "finished":
                    result = future.result()
                    if not isinstance(result, BlockFailure):
                        add(scene, result)
                        progress.advance(result.pixels)
            else:
                try:
                    result = block_result(future, work.grid, work.out, tick)
                except NoWorkerError:
                    raise
                except UserError as exc:
                    scene.error = exc  # its tasks already submitted finish (a window at most)
                else:
                    add(scene, result)
                    progress.advance(result.pixels)
            if scene.error is not None:
                if stop_on_failure:  # `run`: its one line now, its other tasks released
                    with contextlib.suppress(Exception):
                        client.cancel(list(scene.futures))
                    end(scene, None)
                    failed = False
                    return
                if not scene.futures:
                    end(scene, None)
            elif work.remaining == 0:
                end(scene, _finish(scene, texts.seconds_once(work, tick)))
        failed = False
    except NoWorkerError:
        for scene in [sc for sc in open_scenes.values() if sc.error is not None]:
            end(scene, None)  # its own error, not the cluster's
        raise
    finally:
        if failed:  # nothing of this run keeps running on the scheduler
            with contextlib.suppress(Exception):
                client.cancel([f for sc in open_scenes.values() for f in sc.futures])
        for scene in open_scenes.values():
            with contextlib.suppress(Exception):
                scene.work.records.flush()
        client.unsubscribe_topic(topic)
