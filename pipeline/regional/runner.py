"""Running a regional job (`reattn-batch job run SPEC.yaml`): every scene of the spec into
its own label store ``<output_root>/<scene stem>.labels.zarr``, with one model and class
list for all. Idempotent, so cron or Airflow can simply run it again:

- a store that is complete and of the same run (same ``run_fingerprint``) is skipped;
- a store of the same run that is not complete is resumed (only unfinished blocks);
- a store of a different run (the scene file, classes, model or settings changed) is
  never overwritten: the scene fails with a line saying so;
- a scene that fails (unreadable file, a failed read, a worker error; a STAC Item that
  is missing, refused by the href policy or without a visual asset, which is read and
  resolved only here, when its scene is triaged) is recorded with its one-line message
  and the job goes on with the other scenes.

Scenes are in flight together: the blocks of every scene go through one bounded window
(blocks/submit.py), so the cluster stays full across scene boundaries, and the next
scenes are planned, guarded and their stores created (by a thread, a window's worth
ahead) while earlier blocks run. The text embeddings are one task for the whole job and
each worker loads the model once; each scene keeps its own store, completion records,
resume and index entry.

The index is rewritten at most every :data:`INDEX_INTERVAL` seconds as scenes end, and at
the end, with ``summary.json`` (or ``--summary``). Exit status 0 when no scene failed, 1
otherwise (2: the spec itself is wrong, or another run holds the output root's lock). The
cluster is connected to once, and only when some scene needs computing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import threading
import time
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reattn_batch import store
from reattn_batch.blocks.submit import compute_scenes
from reattn_batch.regional.index import (
    INDEX_GEOJSON,
    SceneEntry,
    counts,
    now,
    store_facts,
    write_index,
    write_json,
)
from reattn_batch.regional.paths import check_summary
from reattn_batch.regional.spec import RegionalJob
from reattn_batch.run.bounded import window_for
from reattn_batch.run.cluster import cluster_info, connect
from reattn_batch.run.fingerprint import worker_precision
from reattn_batch.run.plan import Plan
from reattn_batch.run.progress import RunProgress
from reattn_batch.run.read_ahead import read_ahead
from reattn_batch.run.request import SceneRequest
from reattn_batch.run.scene_work import SceneWork, open_scene_work
from reattn_batch.run.spine import identify
from reattn_batch.run.stop import RunStopped, Stop
from reattn_batch.run.summary import RunSummary
from reattn_batch.run.watch import NoWorkerError
from reattn_batch.store.lock import FileLock
from reattn_batch.store.lock import hold as hold_lock
from reattn_batch.workers.describe import one_line
from reattn_batch.workers.errors import InputError, UserError
from reattn_batch.workers.model_spec import describe_weights

if TYPE_CHECKING:
    from distributed import Client

log = logging.getLogger(__name__)

SUMMARY_JSON = "summary.json"
LOCK_FILE = ".reattn-batch-job.lock"
#: Least seconds between two rewrites of the index while the job runs (each is O(scenes)).
INDEX_INTERVAL = 5.0
#: What a scene whose store another run (or an export) holds says to do: the job names
#: its stores, so another path is no choice.
SCENE_LOCK_FIX = "run the job again once it has ended (finished scenes are skipped)"


@dataclasses.dataclass(frozen=True)
class JobReport:
    scenes: list[SceneEntry]
    counts: dict[str, int]
    seconds: float
    summary: Path
    index: Path

    @property
    def failed(self) -> int:
        return self.counts.get("failed", 0)


def _job_lock(root: Path) -> FileLock:
    """One run per output root at a time (cron may start a run before the last ends): the
    lock file ``root/LOCK_FILE`` (store/lock.py), held until the job ends (``with``)."""
    return hold_lock(
        root / LOCK_FILE,
        what=f"the output root {root}",
        fix="wait for that job run to finish",
    )


@dataclasses.dataclass
class _Triaged:
    """A scene that needs computing: its request (``resume`` set), plan and fingerprint."""

    entry: SceneEntry
    request: SceneRequest
    layout: Plan
    fingerprint: str


class _Ledger:
    """The job's entries as scenes end: timing, the store's facts, the progress display
    and the index, rewritten at most every ``interval`` seconds (and by :meth:`write`)."""

    def __init__(self, job: RegionalJob, entries: list[SceneEntry], interval: float) -> None:
        self.job, self.entries = job, entries
        self.least_interval = self.interval = interval
        self.started: dict[str, float] = {}  # store -> when the scene was first looked at
        self.ended = 0
        self.written = False  # the index was written (its first write has begun)
        self.last_write = time.monotonic()
        self.progress: RunProgress | None = None
        self.lock = threading.RLock()  # scenes end in the read-ahead thread too

    def start(self, entry: SceneEntry) -> None:
        self.started[entry.store] = time.perf_counter()

    def end(
        self, entry: SceneEntry, status: str, message: str | None = None, opened: bool = False
    ) -> None:
        """``entry`` ended with ``status``; ``opened``: its blocks went through the window
        (the progress display counted it there)."""
        with self.lock:
            self._end(entry, status, message, opened)

    def _end(self, entry: SceneEntry, status: str, message: str | None, opened: bool) -> None:
        entry.status, entry.message = status, message
        if not opened and self.progress is not None:
            self.progress.scene_skipped(failed=status == "failed")
        entry.seconds = round(time.perf_counter() - self.started.pop(entry.store), 3)
        try:
            facts = store_facts(Path(entry.store))
        except Exception as exc:  # a path that is not a store: say so, keep going
            facts = {}
            log.debug("cannot read %s: %s", entry.store, exc)
        for key, value in facts.items():
            setattr(entry, key, value)
        self.ended += 1
        log.info(
            "job %s: scene %d/%d %s: %s%s (%.1f s)", self.job.name, self.ended,
            len(self.entries), entry.uri, status, f": {message}" if message else "",
            entry.seconds,
        )  # fmt: skip
        if time.monotonic() - self.last_write >= self.interval:
            self.write()

    def write(self) -> Path:
        """Rewrite the index now; the next rewrite waits at least ``interval`` seconds and
        20 times this one's duration (a 10,000-scene index: index time <= 5 %)."""
        with self.lock:
            start = time.monotonic()
            self.written = True
            path = write_index(self.job, self.entries)
            self.last_write = time.monotonic()
        self.interval = max(self.least_interval, 20 * (self.last_write - start))
        return path

    def fail(self, entry: SceneEntry, exc: BaseException, opened: bool = False) -> None:
        log.debug("scene %s failed", entry.uri, exc_info=exc)
        self.end(entry, "failed", one_line(exc, limit=None), opened)


def _triage(
    job: RegionalJob, entry: SceneEntry, weights: dict[str, Any], ledger: _Ledger
) -> _Triaged | None:
    """Plan the scene and compare it with its store, without a cluster: a complete store of
    the same run is skipped, a partial one resumed, one of another run refused. None when
    the scene ended here (skipped or failed: recorded on ``entry``)."""
    ledger.start(entry)
    try:
        request = job.request(entry.uri)
        layout, _, fingerprint = identify(request, weights)
        out = Path(entry.store)
        resume = False
        if (out / ".zgroup").exists():
            attrs = store.read_attrs(out)
            if attrs.get("run_fingerprint") != fingerprint:
                raise InputError(
                    f"{out} holds labels of a different run (the scene file, classes, model "
                    "or run settings changed since it was written); it is left as it is: "
                    "move or delete it to map this scene again"
                )
            if attrs.get("complete"):
                ledger.end(entry, "skipped")
                return None
            resume = True
        request = dataclasses.replace(request, resume=resume)
        return _Triaged(entry, request, layout, fingerprint)
    except Exception as exc:
        ledger.fail(entry, exc)
        return None


def _map_scenes(
    job: RegionalJob,
    entries: list[SceneEntry],
    weights: dict[str, Any],
    ledger: _Ledger,
    stack: contextlib.ExitStack,
    client: Client | None,
) -> None:
    """Triage the scenes one by one; connect once the first needs computing (or use
    ``client``), then stream the blocks of all that need it through one window."""
    found = (t for t in (_triage(job, e, weights, ledger) for e in entries) if t is not None)
    first = next(found, None)
    if first is None:
        return  # nothing to compute: no cluster
    computing = itertools.chain([first], found)
    try:
        if client is None:
            client, info = stack.enter_context(connect(job.cluster))
        else:
            info = cluster_info(client, torch_threads=0)
    except UserError as exc:
        for triaged in computing:  # every scene that needs the cluster fails with its line
            ledger.fail(triaged.entry, exc)
        return
    log.info("Dask dashboard: %s", info.dashboard)
    precision = _JobPrecision(client, info, job.model)
    by_store: dict[str, _Triaged] = {}
    # each opened scene's store lock, held until the scene ends: at most the scenes in
    # flight (computing, or opened ahead), not one per scene of the job
    locks: dict[str, FileLock] = {}

    def works() -> Iterator[SceneWork]:
        for triaged in computing:
            lock = None
            try:
                lock = store.lock_store(triaged.entry.store, fix=SCENE_LOCK_FIX)
                work = open_scene_work(
                    triaged.request,
                    triaged.layout,
                    weights=weights,
                    fingerprint=triaged.fingerprint,
                    info=info,
                    precision=precision,
                    lock=lock,
                )
            except Exception as exc:
                if lock is not None:
                    lock.release()
                ledger.fail(triaged.entry, exc)
                continue
            locks[work.out] = lock
            by_store[work.out] = triaged
            yield work

    def on_scene(work: SceneWork, summary: RunSummary | None, error: UserError | None) -> None:
        locks.pop(work.out).release()  # the scene has ended: its store is free
        triaged = by_store.pop(work.out)
        entry = triaged.entry
        if error is not None:
            ledger.fail(entry, error, opened=True)
            return
        entry.computed, entry.crops = summary.computed, summary.crops
        ledger.end(entry, "resumed" if triaged.request.resume else "done", opened=True)

    ahead = read_ahead(works(), window_for(info.total_threads), name="reattn-open-scenes")
    try:
        compute_scenes(
            client,
            info,
            ahead,
            on_scene,
            progress=ledger.progress,
            out=str(job.output_root),
            no_worker_timeout=job.settings.no_worker_timeout,
        )
    except NoWorkerError as exc:  # no worker can run anything: no scene is computed now
        ahead.close()  # no scene is opened after this
        for triaged in list(by_store.values()):  # opened, not ended
            ledger.fail(triaged.entry, exc, opened=True)
        for triaged in computing:  # the rest: those that need computing fail
            ledger.fail(triaged.entry, exc)
    finally:
        ahead.close()
        for lock in locks.values():  # scenes opened but not ended (stopped, or never taken)
            lock.release()


class _JobPrecision:
    """The precision a job's blocks run in (``worker_precision``), asked once some worker
    answers and then kept: every scene of a job has the same model and workers."""

    def __init__(self, client, info, model) -> None:
        self.client, self.info, self.model = client, info, model
        self.value: str | None = None

    def __call__(self) -> str:
        if self.value is not None:
            return self.value
        value = worker_precision(self.client, self.info, self.model)
        if self.client.scheduler_info(n_workers=-1).get("workers"):
            self.value = value  # answered by workers, not the driver's fallback
        return value


def run_job(
    job: RegionalJob, summary_path: Path | None = None, client: Client | None = None
) -> JobReport:
    """Map every scene of ``job``; write the index (as scenes end) and the summary.
    ``client``: a connected ``distributed.Client`` to run on (left open) instead of the
    spec's ``cluster``. A :class:`Stop` (a signal, under ``stop_on_signals``) at any point
    of the job becomes :class:`RunStopped`, once the index says which scenes ended."""
    started, start = now(), time.perf_counter()
    root = job.output_root
    summary_path = Path(summary_path) if summary_path else root / SUMMARY_JSON
    check_summary(summary_path, job.path, job.scenes)  # before anything is written
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(
            f"job spec {job.path}: 'output_root': cannot create {root} ({exc.strerror or exc})"
        ) from None
    entries = [SceneEntry(uri=s, store=str(job.store_for(s))) for s in job.scenes]
    ledger = _Ledger(job, entries, interval=INDEX_INTERVAL)
    report: JobReport | None = None
    with _job_lock(root):
        try:  # a stop is said, and the index rewritten, while the lock is still held
            try:
                weights = describe_weights(job.model)  # once; a missing file fails the job
            except UserError as exc:
                raise InputError(f"job spec {job.path}: 'model': {exc}") from None
            index = ledger.write()
            try:
                with (
                    RunProgress(0, scenes=len(entries)) as ledger.progress,
                    contextlib.ExitStack() as stack,
                ):
                    _map_scenes(job, entries, weights, ledger, stack, client)
            finally:
                ledger.write()  # whatever stopped the job, the index says what ended
            tally = counts(entries)
            seconds = round(time.perf_counter() - start, 3)
            summary = {
                "job": job.name,
                "spec": str(job.path),
                "software": "reattn-batch",
                "software_version": version("reattn-batch"),
                "started": started,
                "finished": now(),
                "seconds": seconds,
                "output_root": str(root),
                "index": str(index),
                "index_geojson": str(root / INDEX_GEOJSON),
                "exit_status": 1 if tally["failed"] else 0,
                "counts": tally,
                "scenes": [e.record() for e in entries],
            }
            summary_path.parent.mkdir(parents=True, exist_ok=True)
            write_json(summary_path, summary)
            report = JobReport(entries, tally, seconds, summary_path, index)
        except Stop as stop:  # tasks cancelled, records flushed, cluster closed: say so
            raise _stopped(stop, ledger, summary_path, report is not None) from None
    return report


def _stopped(stop: Stop, ledger: _Ledger, summary: Path, summarised: bool) -> RunStopped:
    """The one line of a job ended by ``stop``, whenever it came: the index is written
    again (the stop may have cut its last rewrite short; later signals are ignored now)
    and the line names how many scenes ended and whether the ``summary`` was written
    (``summarised``). A job that had not yet written its index (the stop came while it
    took the lock or described the weights) ended no scene."""
    entries = ledger.entries
    ended = sum(entry.status != "pending" for entry in entries)
    where = ""
    if ledger.written and not summarised:
        try:
            where = f" (see {ledger.write()})"
        except OSError as exc:
            where = f" (its index could not be written: {exc.strerror or exc})"
    if summarised:
        return RunStopped(
            stop.signum,
            f"stopped by {stop.name} as the job ended: {ended} of {len(entries)} scenes "
            f"ended and its summary {summary} is written",
        )
    return RunStopped(
        stop.signum,
        f"stopped by {stop.name}: {ended} of {len(entries)} scenes ended{where}, the finished "
        f"blocks of the others are recorded in their stores, and the summary {summary} was "
        "not written; run the job again to finish (it skips finished scenes and resumes "
        "partial ones)",
    )
