"""Resilient jobs (SPEC 3.5): resume, worker loss, job loss, failing reads."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import zarr
from conftest import shared_file
from distributed import Client, LocalCluster

from reattn_batch.cli import main
from reattn_batch.store import done_blocks, read_attrs

TINY = ["--clip-weights", "random", "--set", "clip_model=ViT-T-16-test", "--upsampler", "bilinear"]
CLASSES = ["--classes", "building,road,water,tree"]
BLOCKS = 9  # 1500 x 1500 px in blocks of 512


def resume(mosaic, store) -> None:
    """`run --resume` of the mosaic into ``store`` with the test's settings (blocks of 512)."""
    main(["run", str(mosaic), *CLASSES, *TINY, "--block-size", "512", "--out", str(store),
          "--resume"])  # fmt: skip


def labels_of(store) -> np.ndarray:
    return zarr.open_group(str(store), mode="r")["labels"][:]


@pytest.fixture(scope="module")
def mosaic(tmp_path_factory) -> Path:
    """1500 x 1500 px from the real Koeln tile, mirrored, as a tiled GeoTIFF."""
    src = shared_file("rasters/oem_koeln_50.tif")
    out = tmp_path_factory.mktemp("mosaic") / "mosaic.tif"
    with rasterio.open(src) as ds:
        tile = ds.read()
        data = np.concatenate([tile, tile[:, ::-1]], axis=1)
        data = np.concatenate([data, data[:, ::-1]], axis=2)[:, :1500, :1500]
        profile = ds.profile | {"height": 1500, "width": 1500, "tiled": True,
                                "blockxsize": 256, "blockysize": 256}  # fmt: skip
        with rasterio.open(out, "w", **profile) as dst:
            dst.write(data)
    return out


@pytest.fixture(scope="module")
def clean(mosaic, tmp_path_factory) -> np.ndarray:
    store = tmp_path_factory.mktemp("clean") / "clean.zarr"
    main(["run", str(mosaic), *CLASSES, *TINY, "--block-size", "512", "--out", str(store)])
    assert read_attrs(store)["complete"] is True
    return labels_of(store)


def test_resume_redoes_only_blocks_without_a_record(mosaic, clean, tmp_path):
    store = tmp_path / "s.zarr"
    main(["run", str(mosaic), *CLASSES, *TINY, "--block-size", "512", "--out", str(store)])
    # a torn block: garbage data, no completion record (removed), as after a crash mid-write
    labels = zarr.open_group(str(store), mode="r+")["labels"]
    labels[512:1024, 0:512] = 7
    records = zarr.open_array(str(store / "block_done"), mode="r+")
    records[1, 0] = records[2, 2] = 0  # records lost
    resume(mosaic, store)
    attrs = read_attrs(store)
    assert (
        attrs["blocks_computed_last_run"] == 2
        and attrs["blocks_done_before_last_run"] == BLOCKS - 2
    )
    assert np.array_equal(labels_of(store), clean)


def test_resume_refuses_a_different_run_and_names_what_differs(mosaic, clean, tmp_path, capsys):
    store = tmp_path / "s.zarr"
    main(["run", str(mosaic), *CLASSES, *TINY, "--block-size", "512", "--out", str(store)])
    with pytest.raises(SystemExit) as exit_info:
        main(["run", str(mosaic), "--classes", "building,road", *TINY, "--block-size", "512",
              "--out", str(store), "--resume"])  # fmt: skip
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "classes" in err[0] and "--overwrite" in err[0]
    assert np.array_equal(labels_of(store), clean)  # nothing lost
    with pytest.raises(SystemExit):  # neither --resume nor --overwrite
        main(["run", str(mosaic), *CLASSES, *TINY, "--block-size", "512", "--out", str(store)])
    assert "--overwrite" in capsys.readouterr().err
    assert np.array_equal(labels_of(store), clean)


def _worker_pids(client: Client) -> list[int]:
    return list(client.run(os.getpid).values())


def test_worker_loss_mid_job_gives_a_complete_identical_store(mosaic, clean, tmp_path):
    store = tmp_path / "s.zarr"
    kills = []
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        args = ["run", str(mosaic), *CLASSES, *TINY, "--block-size", "512", "--out", str(store),
                "--scheduler", cluster.scheduler_address]  # fmt: skip
        job = threading.Thread(target=main, args=(args,))
        job.start()
        for wanted in (2, 4):  # kill a worker process twice, while blocks are running
            deadline = time.monotonic() + 120
            while (not (store / "block_done").exists() or len(done_blocks(store)) < wanted) and (
                time.monotonic() < deadline
            ):
                time.sleep(0.2)
            pid = _worker_pids(client)[0]
            os.kill(pid, signal.SIGKILL)
            kills.append(pid)
            client.wait_for_workers(2, timeout=60)  # the nanny restarts it
        job.join(timeout=300)
        assert not job.is_alive()
    assert len(set(kills)) == 2
    assert read_attrs(store)["complete"] is True
    assert np.array_equal(labels_of(store), clean)


def test_job_killed_mid_run_then_resumed(mosaic, clean, tmp_path):
    store = tmp_path / "s.zarr"
    cmd = [sys.executable, "-m", "reattn_batch", "run", str(mosaic), *CLASSES, *TINY,
           "--block-size", "512", "--out", str(store)]  # fmt: skip
    proc = subprocess.Popen(cmd, start_new_session=True, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if (store / "block_done").exists() and len(done_blocks(store)) >= 3:
                break
            assert proc.poll() is None, "the job ended before it could be killed"
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGKILL)  # the job and its local workers, at once
    finally:
        proc.wait(timeout=30)
    done_at_kill = done_blocks(store)
    assert 3 <= len(done_at_kill) < BLOCKS
    resume(mosaic, store)
    attrs = read_attrs(store)
    assert attrs["blocks_computed_last_run"] == BLOCKS - len(done_at_kill)
    window = 4  # the submission window of a one-thread local cluster: max(2 x threads, 4)
    assert attrs["blocks_recomputed_last_run"] <= window
    assert np.array_equal(labels_of(store), clean)
