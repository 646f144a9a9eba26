"""`run`: one scene, any size, into one georeferenced label Zarr store (SPEC 3).

The spine, top-down, each step in its own module:

    plan      open the scene (metadata only) and lay out the grids     run/plan.py
    identify  weight identities and the run fingerprint                 run/fingerprint.py
    lock      one run per store: a second is refused at once            store/lock.py
    connect   an embedded LocalCluster or an existing scheduler         run/cluster.py
    guard     refuse a block size whose task would not fit a worker     run/guard.py
    store     create the store, or reopen it for --resume               run/scene_work.py
    submit    one task per block, a bounded window at a time            blocks/submit.py
    summary   mark the store complete, record the counters              run/summary.py

(scene_work.py holds the steps from guard to summary that a scene needs once the cluster
is known, so that a regional job can take them for many scenes.)

A regional job (regional/runner.py) runs the same steps for each of its scenes, with one
connection, and the blocks of all its scenes through one window.

Plan and identify are cheap and fail fast; the store is created only once the cluster is
reachable and the guard has passed, so bad input or an unreachable scheduler leave
nothing behind (the store's lock file, taken before, is removed as the run ends).
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from pathlib import Path

from distributed import Client

from reattn_batch import store
from reattn_batch.blocks.submit import compute_scenes
from reattn_batch.run.cluster import ClusterInfo, connect
from reattn_batch.run.fingerprint import run_fingerprint, worker_precision
from reattn_batch.run.plan import Plan, plan
from reattn_batch.run.progress import RunProgress
from reattn_batch.run.request import SceneRequest
from reattn_batch.run.scene_work import SceneWork, open_scene_work
from reattn_batch.run.stop import RunStopped, Stop
from reattn_batch.run.summary import RunSummary
from reattn_batch.scene.uri import is_remote
from reattn_batch.store.target import check_out
from reattn_batch.workers.errors import UserError
from reattn_batch.workers.model_spec import describe_weights

log = logging.getLogger(__name__)


def identify(request: SceneRequest, weights: dict | None = None) -> tuple[Plan, dict, str]:
    """Plan the scene and compute its run fingerprint: the plan, the weight identities
    (``weights``, else described here, after the plan) and the fingerprint; refuses an
    ``out`` that is the scene itself or that no run can write (store/target.py).
    Cluster-free: bad input fails here, before anything is written."""
    layout = plan(request)
    weights = describe_weights(request.model) if weights is None else weights
    fingerprint = run_fingerprint(request, layout, weights)
    if not is_remote(layout.scene.path):
        store.check_not_input(str(Path(request.out).absolute()), [layout.scene.path])
    check_out(request.out)
    return layout, weights, fingerprint


def run_scene(
    request: SceneRequest, connection: tuple[Client, ClusterInfo] | None = None
) -> RunSummary:
    """Map one scene. ``connection``: an open ``(client, info)`` from ``connect`` to reuse;
    by default the request's cluster is connected and closed here. A :class:`Stop` (a
    signal, under ``stop_on_signals``) becomes :class:`RunStopped` once the run's tasks are
    cancelled, its records flushed and its cluster closed."""
    opened: list[SceneWork] = []  # the scene's work, once its store is open
    try:
        return _run_scene(request, connection, opened)
    except Stop as stop:
        raise _stopped(stop, opened[0] if opened else None, request.out) from None


def _stopped(stop: Stop, work: SceneWork | None, out: str | Path) -> RunStopped:
    """The one line of a run ended by ``stop``: how many blocks are recorded, and where."""
    if work is None:
        return RunStopped(
            stop.signum,
            f"stopped by {stop.name} before any block of {out} was computed; "
            "rerun with resume=True to finish",
        )
    return RunStopped(
        stop.signum,
        f"stopped by {stop.name}: {work.records.done_count()} of {len(work.grid)} blocks "
        f"done and recorded in {work.out}; rerun with resume=True to finish",
    )


def _run_scene(
    request: SceneRequest,
    connection: tuple[Client, ClusterInfo] | None,
    opened: list[SceneWork],
) -> RunSummary:
    layout, weights, fingerprint = identify(request)
    connecting = connect(request.cluster) if connection is None else nullcontext(connection)
    ended: list[tuple[RunSummary | None, UserError | None]] = []

    def on_scene(work: SceneWork, summary: RunSummary | None, error: UserError | None) -> None:
        ended.append((summary, error))

    # one run per store: a second is refused here, before it starts a cluster or reads the
    # store; held until this run ends, however it ends
    with store.lock_store(request.out) as lock, connecting as (client, info):
        log.info("Dask dashboard: %s", info.dashboard)
        work = open_scene_work(
            request,
            layout,
            weights=weights,
            fingerprint=fingerprint,
            info=info,
            precision=lambda: worker_precision(client, info, request.model),
            lock=lock,
        )
        opened.append(work)
        with RunProgress(0) as progress:
            compute_scenes(
                client, info, [work], on_scene, progress=progress, out=work.out,
                no_worker_timeout=request.settings.no_worker_timeout, stop_on_failure=True,
            )  # fmt: skip
    ((summary, error),) = ended
    if error is not None:
        raise error
    return summary
