"""Issue 11 item 1: task keys unique per run (SPEC 3.5 "Runs never share tasks").

Two runs of the same scene with the same settings into two different stores, on ONE
existing scheduler, at the same time: both must complete and each must equal a clean
run. Black-box: ``python -m reattn_batch run`` subprocesses, a real ``dask scheduler`` and
``dask worker`` on loopback.

Overlap is made certain, not left to timing: the worker's only thread is held by a task
of this test's client until the scheduler shows both runs' clients waiting for tasks.
"""

from __future__ import annotations

import sys
import time

import cli_helpers as h
import cloudpickle
import numpy as np
import pytest
from cluster_helpers import dask_processes
from distributed import Client, Event

BLOCK = ["--block-size", "512"]


def _clients_waiting(dask_scheduler) -> int:
    """Run on the scheduler: how many clients want some task (ours wants none)."""
    return len({cs.client_key for ts in dask_scheduler.tasks.values() for cs in ts.who_wants})


@pytest.mark.timeout(600)
def test_two_concurrent_runs_into_two_stores_on_one_scheduler(tmp_path, tmp_path_factory):
    scene = h.write_scene(tmp_path / "scene.tif", 700, 600)  # 2 x 2 blocks of 512
    cache = {"REATTN_BATCH_CACHE": str(tmp_path_factory.getbasetemp() / "cache")}
    with (
        dask_processes(tmp_path / "dask", n_workers=1, env=cache) as procs,
        Client(scheduler_file=str(procs.scheduler_file), timeout="60s") as client,
    ):
        client.wait_for_workers(1, timeout=120)
        cloudpickle.register_pickle_by_value(sys.modules[__name__])  # dask cannot import tests
        where = ["--scheduler-file", procs.scheduler_file]
        clean = tmp_path / "clean.zarr"
        h.ok(h.cli("run", scene, *h.CLASSES, *h.TINY, *BLOCK, *where, "--out", clean))

        go = Event("reattn-test-go", client=client)

        def hold() -> None:  # occupies the worker's only thread until `go`
            Event("reattn-test-go").wait(timeout=120)

        holder = client.submit(hold, resources={"GPU": 1}, pure=False)
        stores = [tmp_path / "a.zarr", tmp_path / "b.zarr"]
        runs = [h.start("run", scene, *h.CLASSES, *h.TINY, *BLOCK, *where, "--out", s)
                for s in stores]  # fmt: skip
        started = time.monotonic()
        try:
            h.wait_for(
                lambda: client.run_on_scheduler(_clients_waiting) >= 2,
                timeout=120,
                what="both runs to submit their tasks",
            )
        finally:
            go.set()
        holder.result(timeout=60)
        results = [h.finish(run, timeout=400, started=started) for run in runs]
    for result in results:
        h.ok(result)
    want = h.labels(clean)
    assert len(np.unique(want)) > 1
    for store in stores:
        assert h.attrs(store)["complete"] is True
        assert np.array_equal(h.labels(store), want), f"{store.name} differs from a clean run"
