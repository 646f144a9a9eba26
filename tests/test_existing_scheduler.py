"""`run` against an existing cluster (SPEC 3.4): a real `dask scheduler` and two real
`dask worker` processes on loopback that advertise ``--resources GPU=1`` (CPU workers,
to exercise the resource path), reached by ``--scheduler-file`` and ``--scheduler``.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import zarr
from cluster_helpers import (
    TINY,
    dask_processes,
    install_task_recorder,
    recorded_tasks,
    register_by_value,
)
from conftest import koeln_window_tif, labels_of
from distributed import Client

from reattn_batch.cli import main
from reattn_batch.workers import model_cache

CLASSES = ["--classes", "building,road,water,tree"]


def run_cli(*args: object) -> None:
    main(["run", *(str(a) for a in args)])


@pytest.fixture(scope="module")
def koeln_small(tmp_path_factory) -> str:
    """2 x 2 blocks of 512."""
    return koeln_window_tif(tmp_path_factory.mktemp("scene"), 700, 600, "koeln_small.tif")


@pytest.fixture(scope="module")
def local_labels(tmp_path_factory, koeln_small) -> np.ndarray:
    """The same job on the default embedded LocalCluster."""
    store = tmp_path_factory.mktemp("local") / "local.zarr"
    run_cli(koeln_small, *CLASSES, *TINY, "--block-size", 512, "--out", store)
    return labels_of(store)


@pytest.fixture(scope="module")
def gpu_cluster(tmp_path_factory):
    """A scheduler and two GPU-advertising CPU workers; yields (processes, client)."""
    base = tmp_path_factory.getbasetemp()
    with dask_processes(
        tmp_path_factory.mktemp("dask"),
        n_workers=2,
        env={"REATTN_BATCH_CACHE": str(base / "cache")},  # as conftest's fixture
    ) as procs:
        try:
            with Client(scheduler_file=str(procs.scheduler_file), timeout="60s") as client:
                client.wait_for_workers(2, timeout=120)
                register_by_value()
                client.run_on_scheduler(install_task_recorder)
                client.get_task_stream()  # installs the scheduler's task-stream plugin
                yield procs, client
        except Exception:
            print(procs.log_tail())
            raise


def check_ran_on_gpu_workers(client: Client, since: float) -> None:
    workers = client.scheduler_info()["workers"]
    gpu_workers = {a for a, w in workers.items() if w.get("resources", {}).get("GPU") == 1}
    assert len(gpu_workers) == 2, workers
    seen = client.run_on_scheduler(recorded_tasks, clear=True)
    blocks = {k: v for k, v in seen.items() if k.startswith("block-")}
    embeds = {k: v for k, v in seen.items() if k.startswith("embed_queries_timed-")}
    assert len(blocks) == 4 and len(embeds) == 1, sorted(seen)
    for key, (restrictions, worker) in {**blocks, **embeds}.items():
        assert restrictions == {"GPU": 1}, (key, restrictions)
        assert worker in gpu_workers, (key, worker)
    stream = [t for t in client.get_task_stream(start=since) if t["key"].startswith("block-")]
    assert {t["key"] for t in stream} == set(blocks)
    assert {t["worker"] for t in stream} <= gpu_workers
    loads = client.run(model_cache.load_count)
    assert sum(loads.values()) >= 1, loads
    assert all(n <= 1 for n in loads.values()), loads  # once per worker process, ever


def test_run_with_scheduler_file_uses_the_gpu_workers(tmp_path, koeln_small, local_labels,
                                                      gpu_cluster):  # fmt: skip
    procs, client = gpu_cluster
    since = time.time()
    store = tmp_path / "file.zarr"
    run_cli(koeln_small, *CLASSES, *TINY, "--block-size", 512,
            "--scheduler-file", procs.scheduler_file, "--out", store)  # fmt: skip
    check_ran_on_gpu_workers(client, since)
    labels = labels_of(store)
    assert labels.shape == (600, 700) and len(np.unique(labels)) > 1
    assert np.array_equal(labels, local_labels)
    assert zarr.open_group(str(store), mode="r").attrs["complete"] is True


def test_run_with_scheduler_address_uses_the_gpu_workers(tmp_path, koeln_small, local_labels,
                                                         gpu_cluster):  # fmt: skip
    procs, client = gpu_cluster
    assert procs.address.startswith("tcp://127.0.0.1:")
    since = time.time()
    store = tmp_path / "address.zarr"
    run_cli(koeln_small, *CLASSES, *TINY, "--block-size", 512,
            "--scheduler", procs.address, "--out", store)  # fmt: skip
    check_ran_on_gpu_workers(client, since)
    assert np.array_equal(labels_of(store), local_labels)


def error_lines(capsys) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("reattn-batch: error:")]


def test_unreachable_scheduler_fails_fast_with_one_line(tmp_path, koeln_small, capsys,
                                                        monkeypatch):  # fmt: skip
    monkeypatch.setenv("REATTN_BATCH_CONNECT_TIMEOUT", "2")
    start = time.monotonic()
    with pytest.raises(SystemExit) as exit_info:
        run_cli(koeln_small, *CLASSES, *TINY, "--scheduler", "tcp://127.0.0.1:1",
                "--out", tmp_path / "never.zarr")  # fmt: skip
    assert exit_info.value.code == 2
    assert time.monotonic() - start < 30
    (line,) = error_lines(capsys)
    assert "tcp://127.0.0.1:1" in line and "within 2 s" in line
    assert "drop --scheduler" in line  # names the fix


def test_missing_scheduler_file_gives_one_line(tmp_path, koeln_small, capsys):
    missing = tmp_path / "nope.json"
    with pytest.raises(SystemExit) as exit_info:
        run_cli(koeln_small, *CLASSES, *TINY, "--scheduler-file", missing,
                "--out", tmp_path / "never.zarr")  # fmt: skip
    assert exit_info.value.code == 2
    (line,) = error_lines(capsys)
    assert str(missing) in line and "dask scheduler --scheduler-file" in line


def test_bad_connect_timeout_is_refused(tmp_path, koeln_small, capsys, monkeypatch):
    monkeypatch.setenv("REATTN_BATCH_CONNECT_TIMEOUT", "soon")
    with pytest.raises(SystemExit) as exit_info:
        run_cli(koeln_small, *CLASSES, *TINY, "--scheduler", "tcp://127.0.0.1:1",
                "--out", tmp_path / "never.zarr")  # fmt: skip
    assert exit_info.value.code == 2
    (line,) = error_lines(capsys)
    assert "REATTN_BATCH_CONNECT_TIMEOUT" in line
