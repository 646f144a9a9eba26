"""Running a regional job (`reattn-batch job run SPEC.yaml`): every scene of the spec into
its own label store ``<output_root>/<scene stem>.labels.zarr``, with one model and class
list for all. Idempotent, so cron or Airflow can simply run it again:

- a store that is complete and of the same run (same ``run_fingerprint``) is skipped;
- a store of the same run that is not complete is resumed (only unfinished blocks);
- a store of a different run (the scene file, classes, model or settings changed) is
  never overwritten: the scene fails with a line saying so;
- a scene that fails (unreadable file, a failed read, a worker error) is recorded with
  its one-line message and the job goes on with the next scene.

The index is rewritten after every scene and ``summary.json`` (or ``--summary``) written
at the end. Exit status 0 when no scene failed, 1 otherwise (2: the spec itself is wrong,
or another run holds the output root's lock). The cluster is connected to once, and only
when some scene needs computing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import os
import time
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

from reattn_batch import store
from reattn_batch.regional.index import (
    INDEX_GEOJSON,
    SceneEntry,
    counts,
    now,
    store_facts,
    write_index,
    write_json,
)
from reattn_batch.regional.spec import RegionalJob
from reattn_batch.run.cluster import ClusterInfo, connect
from reattn_batch.run.fingerprint import run_fingerprint
from reattn_batch.run.plan import plan
from reattn_batch.run.spine import run_scene
from reattn_batch.settings import ClusterSettings
from reattn_batch.workers.describe import one_line
from reattn_batch.workers.errors import InputError, UserError
from reattn_batch.workers.model_spec import describe_weights

log = logging.getLogger(__name__)

SUMMARY_JSON = "summary.json"
LOCK_FILE = ".reattn-batch-job.lock"


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


@contextlib.contextmanager
def _job_lock(root: Path) -> Iterator[None]:
    """One run per output root at a time (cron may start a run before the last ends)."""
    with open(root / LOCK_FILE, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise InputError(
                f"another job run is writing to {root} (it holds {LOCK_FILE}); "
                "wait for it to finish"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} since {now()}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class _LazyConnection:
    """Connect to the cluster on first use, once; a failure fails every later use at once."""

    def __init__(self, request: ClusterSettings, stack: contextlib.ExitStack) -> None:
        self.request, self.stack = request, stack
        self.connection: tuple[Any, ClusterInfo] | None = None
        self.error: UserError | None = None

    def __call__(self) -> tuple[Any, ClusterInfo]:
        if self.error is not None:
            raise self.error
        if self.connection is None:
            try:
                self.connection = self.stack.enter_context(connect(self.request))
            except UserError as exc:
                self.error = exc
                raise
        return self.connection


def _map_scene(
    job: RegionalJob,
    entry: SceneEntry,
    weights: dict[str, Any],
    connection: _LazyConnection,
) -> None:
    """Skip, resume or map one scene; a failure is recorded on ``entry``, never raised."""
    out = Path(entry.store)
    request = job.request(entry.uri)
    start = time.perf_counter()
    try:
        resume = False
        if (out / ".zgroup").exists():
            attrs = store.read_attrs(out)
            if attrs.get("run_fingerprint") != run_fingerprint(request, plan(request), weights):
                raise InputError(
                    f"{out} holds labels of a different run (the scene file, classes, model "
                    "or run settings changed since it was written); it is left as it is: "
                    "move or delete it to map this scene again"
                )
            if attrs.get("complete"):
                entry.status = "skipped"
                return
            resume = True
        elif connection.connection is None:
            plan(request)  # a scene that cannot be opened needs no cluster
        result = run_scene(dataclasses.replace(request, resume=resume), connection=connection())
        entry.status = "resumed" if resume else "done"
        entry.computed, entry.crops = result.computed, result.crops
    except Exception as exc:
        entry.status, entry.message = "failed", one_line(exc, limit=None)
        log.debug("scene %s failed", entry.uri, exc_info=True)
    finally:
        entry.seconds = round(time.perf_counter() - start, 3)
        try:
            facts = store_facts(out)
        except Exception as exc:  # a path that is not a store: say so, keep going
            facts = {}
            log.debug("cannot read %s: %s", out, exc)
        for key, value in facts.items():
            setattr(entry, key, value)


def run_job(job: RegionalJob, summary_path: Path | None = None) -> JobReport:
    """Map every scene of ``job``; write the index (after each scene) and the summary."""
    started, start = now(), time.perf_counter()
    root = job.output_root
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(
            f"job spec {job.path}: 'output_root': cannot create {root} ({exc.strerror or exc})"
        ) from None
    summary_path = Path(summary_path) if summary_path else root / SUMMARY_JSON
    with _job_lock(root):
        try:
            weights = describe_weights(job.model)  # once; a missing file fails the job
        except UserError as exc:
            raise InputError(f"job spec {job.path}: 'model': {exc}") from None
        entries = [SceneEntry(uri=s, store=str(job.store_for(s))) for s in job.scenes]
        index = write_index(job, entries)
        with contextlib.ExitStack() as stack:
            connection = _LazyConnection(job.cluster, stack)
            for i, entry in enumerate(entries, 1):
                log.info("job %s: scene %d/%d %s", job.name, i, len(entries), entry.uri)
                _map_scene(job, entry, weights, connection)
                log.info(
                    "job %s: scene %d/%d %s: %s%s (%.1f s)", job.name, i, len(entries),
                    entry.uri, entry.status, f": {entry.message}" if entry.message else "",
                    entry.seconds,
                )  # fmt: skip
                write_index(job, entries)
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
    return JobReport(entries, tally, seconds, summary_path, index)
