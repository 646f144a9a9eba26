"""Issue 11 item 11: the invariants always tested. Synthetic-scene twins of the tests that
skip without ../shared (the real-file variants stay where they are):

- exact stitching for any block size and worker count, with and without resampling
  (tests/test_run_scene.py::test_labels_identical_for_any_block_size_and_worker_count);
- resume: only blocks without a record are redone; a different run is refused, nothing
  lost (tests/test_resilience.py);
- a worker killed twice mid-job, and a job killed mid-run then resumed, both equal a clean
  run (tests/test_resilience.py);
- an existing scheduler with GPU-advertising workers runs every model task there, with
  the same labels as the embedded cluster (tests/test_existing_scheduler.py);
- a regional job maps, records a broken scene, skips finished stores and resumes a
  partial one (tests/test_regional.py).

Black-box (``python -m reattn_batch`` subprocesses, real Dask processes): they pass today and
must keep passing through the pipeline/ restructure and the issue-11 fixes.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import cli_helpers as h
import numpy as np
import pytest
import rasterio
import zarr
from cluster_helpers import (
    dask_processes,
    install_task_recorder,
    recorded_tasks,
    register_by_value,
)
from distributed import Client

BLOCK = ["--block-size", "512"]
MOSAIC_BLOCKS = 9  # 1500 x 1500 px in blocks of 512


# ----------------------------------------------------------------------------- exactness


@pytest.fixture(scope="module")
def scene_900x700(tmp_path_factory) -> Path:
    return h.write_scene(tmp_path_factory.mktemp("scene") / "scene.tif", 900, 700, seed=1)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("gsd", [None, "0.8"])
def test_labels_identical_for_any_block_size_and_worker_count(tmp_path, scene_900x700, gsd):
    extra = [] if gsd is None else ["--gsd", gsd]
    blocked, whole = tmp_path / "blocked.zarr", tmp_path / "whole.zarr"
    h.ok(h.cli("run", scene_900x700, *h.CLASSES, *h.TINY, *extra, "--block-size", 512,
               "--workers", 2, "--out", blocked, timeout=600))  # fmt: skip
    h.ok(h.cli("run", scene_900x700, *h.CLASSES, *h.TINY, *extra, "--block-size", 1024,
               "--workers", 1, "--out", whole, timeout=600))  # fmt: skip
    a, b = h.labels(blocked), h.labels(whole)
    assert a.shape == (700, 900)
    assert np.array_equal(a, b)
    assert len(np.unique(a)) > 1  # a real map, not a constant


# ----------------------------------------------------------------------------- resume


@pytest.fixture(scope="module")
def mosaic(tmp_path_factory) -> Path:
    return h.write_scene(tmp_path_factory.mktemp("mosaic") / "mosaic.tif", 1500, 1500, seed=2)


@pytest.fixture(scope="module")
def clean(mosaic, tmp_path_factory) -> np.ndarray:
    store = tmp_path_factory.mktemp("clean") / "clean.zarr"
    h.ok(h.cli("run", mosaic, *h.CLASSES, *h.TINY, *BLOCK, "--out", store, timeout=600))
    assert h.attrs(store)["complete"] is True
    labels = h.labels(store)
    assert len(np.unique(labels)) > 1
    return labels


@pytest.mark.timeout(900)
def test_resume_redoes_only_blocks_without_a_record(mosaic, clean, tmp_path):
    store = tmp_path / "s.zarr"
    h.ok(h.cli("run", mosaic, *h.CLASSES, *h.TINY, *BLOCK, "--out", store, timeout=600))
    # torn blocks: garbage data and no completion record, as after a crash mid-write
    zarr.open_group(str(store), mode="r+")["labels"][512:1024, 0:512] = 7
    for row, col in ((1, 0), (2, 2)):
        h.drop_record(store, row, col)  # LAYOUT ASSUMPTION (in the helper)
    h.ok(h.cli("run", mosaic, *h.CLASSES, *h.TINY, *BLOCK, "--out", store, "--resume",
               timeout=600))  # fmt: skip
    attrs = h.attrs(store)
    assert attrs["blocks_computed_last_run"] == 2
    assert attrs["blocks_done_before_last_run"] == MOSAIC_BLOCKS - 2
    assert np.array_equal(h.labels(store), clean)


@pytest.mark.timeout(900)
def test_resume_refuses_a_different_run_and_names_what_differs(mosaic, clean, tmp_path):
    store = tmp_path / "s.zarr"
    h.ok(h.cli("run", mosaic, *h.CLASSES, *h.TINY, *BLOCK, "--out", store, timeout=600))
    digest = h.tree_digest(store)
    result = h.cli("run", mosaic, "--classes", "building,road", *h.TINY, *BLOCK,
                   "--out", store, "--resume")  # fmt: skip
    line = h.one_clean_error(result)
    assert result.rc == 2 and "classes" in line and "--overwrite" in line, line
    result = h.cli("run", mosaic, *h.CLASSES, *h.TINY, *BLOCK, "--out", store)  # no flag
    assert "--overwrite" in h.one_clean_error(result)
    assert h.tree_digest(store) == digest  # nothing lost
    assert np.array_equal(h.labels(store), clean)


# ----------------------------------------------------------------------------- clusters


@pytest.fixture(scope="module")
def gpu_cluster(tmp_path_factory):
    """A scheduler and two GPU-advertising CPU workers (nannies restart killed workers);
    yields (processes, client)."""
    cache = {"REATTN_BATCH_CACHE": str(tmp_path_factory.getbasetemp() / "cache")}
    with dask_processes(tmp_path_factory.mktemp("dask"), n_workers=2, env=cache) as procs:
        try:
            with Client(scheduler_file=str(procs.scheduler_file), timeout="60s") as client:
                client.wait_for_workers(2, timeout=120)
                register_by_value()
                client.run_on_scheduler(install_task_recorder)
                yield procs, client
        except Exception:
            print(procs.log_tail())
            raise


@pytest.mark.timeout(900)
def test_worker_killed_twice_mid_job_gives_a_complete_identical_store(
    mosaic, clean, tmp_path, gpu_cluster
):
    procs, client = gpu_cluster
    store = tmp_path / "s.zarr"
    run = h.start("run", mosaic, *h.CLASSES, *h.TINY, *BLOCK, "--scheduler", procs.address,
                  "--out", store)  # fmt: skip
    kills = []
    try:
        for wanted in (2, 4):  # kill a worker process twice, while blocks are running
            h.wait_for(lambda w=wanted: h.done_blocks(store) >= w, 400, f"{wanted} blocks", run)
            pid = next(iter(client.run(os.getpid).values()))
            os.kill(pid, signal.SIGKILL)
            kills.append(pid)
            client.wait_for_workers(2, timeout=120)  # the nanny restarts it
        result = h.finish(run, timeout=600)
    finally:
        h.kill_group(run)
    h.ok(result)
    assert len(set(kills)) == 2
    assert h.attrs(store)["complete"] is True
    assert np.array_equal(h.labels(store), clean)


@pytest.mark.timeout(900)
def test_job_killed_mid_run_then_resumed(mosaic, clean, tmp_path):
    store = tmp_path / "s.zarr"
    run = h.start("run", mosaic, *h.CLASSES, *h.TINY, *BLOCK, "--out", store)
    try:
        h.wait_for(lambda: h.done_blocks(store) >= 3, 400, "3 blocks", run)
        os.killpg(run.pid, signal.SIGKILL)  # the job and its local workers, at once
    finally:
        h.kill_group(run)
    done_at_kill = h.done_blocks(store)
    assert 3 <= done_at_kill < MOSAIC_BLOCKS
    h.ok(h.cli("run", mosaic, *h.CLASSES, *h.TINY, *BLOCK, "--out", store, "--resume",
               timeout=600))  # fmt: skip
    attrs = h.attrs(store)
    assert attrs["blocks_computed_last_run"] == MOSAIC_BLOCKS - done_at_kill
    window = 4  # the submission window of a one-thread local cluster: max(2 x threads, 4)
    assert attrs["blocks_recomputed_last_run"] <= window
    assert np.array_equal(h.labels(store), clean)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("how", ["--scheduler-file", "--scheduler"])
def test_an_existing_scheduler_runs_the_model_tasks_on_its_gpu_workers(
    tmp_path, scene_900x700, gpu_cluster, how
):
    procs, client = gpu_cluster
    local = tmp_path / "local.zarr"
    h.ok(h.cli("run", scene_900x700, *h.CLASSES, *h.TINY, *BLOCK, "--out", local))
    client.run_on_scheduler(recorded_tasks, clear=True)
    store = tmp_path / "remote.zarr"
    where = procs.scheduler_file if how == "--scheduler-file" else procs.address
    h.ok(h.cli("run", scene_900x700, *h.CLASSES, *h.TINY, *BLOCK, how, where, "--out", store))
    workers = client.scheduler_info()["workers"]
    gpu_workers = {a for a, w in workers.items() if w.get("resources", {}).get("GPU") == 1}
    assert len(gpu_workers) == 2, workers
    seen = client.run_on_scheduler(recorded_tasks, clear=True)
    assert len(seen) >= 4 + 1, sorted(seen)  # 2 x 2 blocks and the text embedding at least
    for key, (restrictions, worker) in seen.items():  # every task of the run (names aside)
        assert restrictions == {"GPU": 1}, (key, restrictions)
        assert worker in gpu_workers, (key, worker)
    assert np.array_equal(h.labels(store), h.labels(local))
    assert h.attrs(store)["complete"] is True


# ----------------------------------------------------------------------------- regional

SPEC = (
    """\
name: test-region
scenes:
  glob: scenes/*.tif
classes: building,road,water,tree
"""
    + h.TINY_MODEL_YAML
    + """\
run:
  block_size: 512
output_root: labels
cluster:
  local: {workers: 1, threads_per_worker: 1}
"""
)


def _mtimes(path: Path) -> dict[str, int]:
    return {str(p.relative_to(path)): p.stat().st_mtime_ns for p in path.rglob("*") if p.is_file()}


def _by_name(entries: list[dict]) -> dict[str, dict]:
    return {Path(e["uri"]).name: e for e in entries}


@pytest.mark.timeout(900)
def test_regional_job_maps_skips_resumes_and_records_the_broken_scene(tmp_path):
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    h.write_scene(scenes / "a.tif", 600, 400, seed=3)  # two blocks of 512
    h.write_scene(scenes / "b.tif", 400, 300, seed=4, crs="EPSG:32652")
    (scenes / "broken.tif").write_bytes(np.random.default_rng(0).bytes(4096))
    spec = tmp_path / "region.yaml"
    spec.write_text(SPEC)
    labels = tmp_path / "labels"
    a, b = labels / "a.labels.zarr", labels / "b.labels.zarr"

    # 1. Everything new: two stores mapped, the broken scene failed, exit status 1.
    result = h.cli("job", "run", spec, timeout=600)
    assert result.rc == 1, result.stderr[-3000:]
    summary = json.loads((labels / "summary.json").read_text())
    assert summary["counts"] == {"done": 2, "resumed": 0, "skipped": 0, "failed": 1}
    got = _by_name(summary["scenes"])
    assert got["broken.tif"]["status"] == "failed" and "\n" not in got["broken.tif"]["message"]
    assert "broken.tif" in got["broken.tif"]["message"]
    assert got["a.tif"]["blocks"] == got["a.tif"]["computed"] == 2
    for out, shape, epsg in ((a, (400, 600), 25832), (b, (300, 400), 32652)):
        assert h.attrs(out)["complete"] is True
        data = h.labels(out)
        assert data.shape == shape and data.max() <= 4  # background + 4 classes, no nodata
        with rasterio.open(f'ZARR:"{out}":/labels') as ds:
            assert ds.crs.to_epsg() == epsg and (ds.height, ds.width) == shape
    index = json.loads((labels / "index.json").read_text())
    assert {k: e["status"] for k, e in _by_name(index["scenes"]).items()} == {
        "a.tif": "done", "b.tif": "done", "broken.tif": "failed",
    }  # fmt: skip

    # 2. Again: the finished stores are skipped untouched; the broken scene still fails.
    before = {out: _mtimes(out) for out in (a, b)}
    first = h.labels(a)
    result = h.cli("job", "run", spec, "--summary", tmp_path / "again.json", timeout=600)
    assert result.rc == 1, result.stderr[-3000:]
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["counts"] == {"done": 0, "resumed": 0, "skipped": 2, "failed": 1}
    assert all(_mtimes(out) == before[out] for out in (a, b))

    # 3. A partial store (block 1's record lost, not complete): resumed, that block only.
    h.drop_record(a, 0, 1)  # LAYOUT ASSUMPTION (in the helper)
    group = zarr.open_group(str(a), mode="r+", use_consolidated=False)
    group.attrs["complete"] = False
    zarr.consolidate_metadata(str(a))
    result = h.cli("job", "run", spec, timeout=600)
    assert result.rc == 1, result.stderr[-3000:]
    third = json.loads((labels / "summary.json").read_text())
    assert third["counts"] == {"done": 0, "resumed": 1, "skipped": 1, "failed": 1}
    resumed = _by_name(third["scenes"])["a.tif"]
    assert (resumed["status"], resumed["blocks"], resumed["computed"]) == ("resumed", 2, 1)
    assert np.array_equal(h.labels(a), first)
    assert h.attrs(a)["complete"] is True
