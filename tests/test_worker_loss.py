"""Issue 18 item 5: worker loss at any moment (SPEC 3.5). A worker that dies while the run
starts (before, during and after the driver's GPU-memory and precision queries) or while
blocks run never fails a run that another worker can finish: the store equals a clean run.

Real ``dask scheduler`` / ``dask worker`` processes on loopback: two CPU workers that
advertise ``GPU=1`` (so the driver asks them for their GPU memory), with nannies (so a
dead worker comes back for the next case); the run uses ``--device auto`` (so the driver
asks the workers for their precision). The moment of death is exact: tests/dying_worker.py,
a real Dask preload, makes one worker process exit on the very message (or the scheduler
SIGKILL one as the run's client connects). The runs are in-process ``main`` calls (as in
tests/test_resilience.py), which spares each the CLI's start-up.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import cli_helpers as h
import numpy as np
import pytest
from cluster_helpers import dask_processes
from distributed import Client

from reattn_batch.cli import main
from reattn_batch.run.broadcast import run_on_workers

pytestmark = pytest.mark.timeout(300)

PRELOAD = str(Path(__file__).with_name("dying_worker.py"))
#: The tiny model with the default ``--device auto``: the precision query depends on workers
TINY_AUTO = [arg for arg in h.TINY if arg not in ("--device", "cpu")]
BLOCK = ["--block-size", "512"]  # 2 x 1 blocks of the scene below

#: When the worker dies -> the preload's trigger (tests/dying_worker.py)
MOMENTS = {
    "before-the-queries": "client",
    "during-the-gpu-memory-query": "run:_cuda_memory",
    "during-the-precision-query": "run:_precision_here",
    "after-the-precision-query": "after:_precision_here",
    "while-blocks-run": "block",
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A scheduler and two GPU-advertising workers, all with the preload; yields
    (processes, client, trigger folder)."""
    base = tmp_path_factory.getbasetemp()
    triggers = tmp_path_factory.mktemp("triggers")
    env = {
        "REATTN_BATCH_CACHE": str(base / "cache"),  # as conftest's fixture
        "REATTN_TEST_DIE_DIR": str(triggers),
        "DASK_DISTRIBUTED__SCHEDULER__PRELOAD": repr([PRELOAD]),
        "DASK_DISTRIBUTED__WORKER__PRELOAD": repr([PRELOAD]),
    }
    with dask_processes(tmp_path_factory.mktemp("dask"), n_workers=2, env=env) as procs:
        try:
            with Client(scheduler_file=str(procs.scheduler_file), timeout="60s") as client:
                client.wait_for_workers(2, timeout=120)
                yield procs, client, triggers
        except Exception:
            print(procs.log_tail())
            raise


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    return h.write_scene(tmp_path_factory.mktemp("scene") / "scene.tif", 700, 300)


def _run(scene: Path, procs, store: Path) -> None:
    main(["run", str(scene), *h.CLASSES, *TINY_AUTO, *BLOCK,
          "--scheduler-file", str(procs.scheduler_file), "--out", str(store)])  # fmt: skip


@pytest.fixture(scope="module")
def clean(cluster, scene, tmp_path_factory) -> Path:
    """The same run on the same cluster, no worker lost."""
    procs, _, _ = cluster
    store = tmp_path_factory.mktemp("clean") / "clean.zarr"
    _run(scene, procs, store)
    return store


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@contextlib.contextmanager
def armed(triggers: Path, trigger: str):
    """Arm the preload's ``trigger`` for the block; yields the file that names, once it
    fired, the pid of the worker process that died."""
    fired = triggers / "fired"
    fired.unlink(missing_ok=True)
    (triggers / "armed").write_text(trigger)
    try:
        yield fired
    finally:
        (triggers / "armed").unlink(missing_ok=True)
    assert fired.is_file(), f"no worker met the trigger {trigger!r}"
    pid = int(fired.read_text())
    h.wait_for(lambda: not _alive(pid), 30, f"worker process {pid} to end")


@pytest.mark.parametrize("moment", MOMENTS)
def test_a_worker_lost_at_any_moment_does_not_fail_the_run(moment, cluster, scene, clean,
                                                           tmp_path, capfd, caplog):  # fmt: skip
    procs, client, triggers = cluster
    client.wait_for_workers(2, timeout=120)  # the worker lost before is back (its nanny)
    capfd.readouterr()
    caplog.set_level(logging.INFO)
    store = tmp_path / "s.zarr"
    with armed(triggers, MOMENTS[moment]):
        _run(scene, procs, store)
    got, want = h.attrs(store), h.attrs(clean)
    assert got["complete"] is True
    assert (got["run_fingerprint"], got["precision"]) == (
        want["run_fingerprint"], want["precision"],
    )  # fmt: skip
    assert np.array_equal(h.labels(store), h.labels(clean))
    # the lost worker is logged in one line, never with a traceback
    assert "Traceback" not in capfd.readouterr().err
    assert not [r for r in caplog.records if r.exc_info], caplog.text[-4000:]


def test_run_on_workers_answers_from_those_that_stay(cluster):
    """The primitive itself: a target that dies on receiving the broadcast is skipped, the
    answers are exactly those of the one that stayed."""
    _, client, triggers = cluster
    client.wait_for_workers(2, timeout=120)
    pids = client.run(os.getpid)
    with armed(triggers, "run:getpid") as fired:
        answers = run_on_workers(client, os.getpid, workers=list(pids), what="a test query")
    (dead,) = [a for a, pid in pids.items() if pid == int(fired.read_text())]
    assert answers == {a: pid for a, pid in pids.items() if a != dead}
