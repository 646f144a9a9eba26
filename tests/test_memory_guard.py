"""The memory guard refuses block sizes that would not fit a worker, before any work."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from affine import Affine
from conftest import koeln_window_tif
from distributed import LocalCluster
from odc.geo.geobox import GeoBox, GeoboxTiles
from reattn_batch.cli import main
from reattn_batch.grid.grids import BlockGrid, ModelGrid
from reattn_batch.run.guard import (
    FLOAT,
    HEADROOM,
    MODEL_BYTES,
    Source,
    Worker,
    check_block_memory,
    estimate_block_memory,
)
from reattn_batch.workers.errors import UserError

BILINEAR = {"batch": 8, "upsampler": "bilinear"}


def grid(block: int, size: int = 20000) -> BlockGrid:
    return BlockGrid(ModelGrid.for_gsd((size, size), 0.5, 0.5), block, 224, 112)


def test_estimate_scales_with_queries_and_block_area():
    small, big = (
        estimate_block_memory(grid(1024), queries=10, **BILINEAR),
        estimate_block_memory(grid(2048), queries=10, **BILINEAR),
    )
    assert small.model == big.model == int(MODEL_BYTES)
    # logits: Q x 4 bytes x (2 model-region + 4 native) pixels; an interior-free first block
    assert big.logits > 3.5 * small.logits
    more = estimate_block_memory(grid(2048), queries=40, **BILINEAR)
    assert more.logits == pytest.approx(4 * big.logits)
    assert (
        estimate_block_memory(grid(2048), queries=10, batch=8, upsampler="jbu_one").crops
        == big.crops + 3 * 8 * 512 * 224 * 224 * FLOAT
    )


def test_refusal_suggests_a_block_size_that_fits():
    need_2048 = estimate_block_memory(grid(2048), queries=100, **BILINEAR).total
    need_1536 = estimate_block_memory(grid(1536), queries=100, **BILINEAR).total
    need_1024 = estimate_block_memory(grid(1024), queries=100, **BILINEAR).total
    limit = int((need_1024 + need_1536) / 2 / 0.8)  # fits 1024, not 1536
    with pytest.raises(UserError, match="--block-size 1024"):
        check_block_memory(grid(2048), queries=100, **BILINEAR, worker_limit=limit)
    assert (
        check_block_memory(grid(1024), queries=100, **BILINEAR, worker_limit=limit).total
        == need_1024
    )
    assert (
        check_block_memory(grid(2048), queries=100, **BILINEAR, worker_limit=None).total
        == need_2048
    )  # unlimited
    with pytest.raises(UserError, match="fewer classes"):
        check_block_memory(
            grid(2048), queries=100, **BILINEAR, worker_limit=int(MODEL_BYTES)
        )  # nothing fits


def test_run_refuses_before_creating_the_store(tmp_path, capsys):
    scene = koeln_window_tif(tmp_path, 600, 500)
    classes = ",".join(f"class{i}" for i in range(200))
    tiny = [
        "--clip-weights",
        "random",
        "--set",
        "clip_model=ViT-T-16-test",
        "--upsampler",
        "bilinear",
    ]
    out = tmp_path / "o.zarr"
    small = LocalCluster(
        n_workers=1, threads_per_worker=1, memory_limit="1.5GiB", dashboard_address=":0"
    )
    with small as cluster, pytest.raises(SystemExit) as exit_info:
        address = ["--scheduler", cluster.scheduler_address]
        main(
            [
                "run",
                scene,
                "--classes",
                classes,
                *tiny,
                "--block-size",
                "2048",
                *address,
                "--out",
                str(out),
            ]
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "GiB" in err[0] and "worker has 1.5 GiB" in err[0]
    assert not out.exists()


# ------------------------------------------------ issue 11 item 5: what runs is counted


def test_a_worker_counts_threads_times_one_block_task():
    need = estimate_block_memory(grid(2048), queries=30, **BILINEAR)
    limit = int((need.worker(1) + need.worker(4)) / 2 / HEADROOM)  # one thread fits, 4 not
    check_block_memory(grid(2048), queries=30, **BILINEAR, workers=[Worker(1, limit)])
    with pytest.raises(UserError, match="4 threads x one block task"):
        check_block_memory(grid(2048), queries=30, **BILINEAR, workers=[Worker(4, limit)])
    # the model is shared by a worker's threads, each thread adds a whole task besides it
    assert need.worker(4) - need.worker(1) == 3 * (need.total - need.model - need.runtime)


def test_a_worker_without_a_limit_does_not_switch_the_guard_off():
    need = estimate_block_memory(grid(2048), queries=30, **BILINEAR)
    small = int(need.total / 2)
    with pytest.raises(UserError, match=f"worker has {small / 2**30:.1f} GiB"):
        check_block_memory(
            grid(2048), queries=30, **BILINEAR, workers=[Worker(1, None), Worker(1, small)]
        )
    check_block_memory(grid(2048), queries=30, **BILINEAR, workers=[Worker(1, None)])


def test_gpu_workers_are_checked_against_the_gpu_memory():
    need = estimate_block_memory(grid(2048), queries=200, batch=8, upsampler="jbu_one")
    plenty = 10 * need.worker(1)
    with pytest.raises(UserError, match="GPU memory"):
        check_block_memory(
            grid(2048), queries=200, batch=8, upsampler="jbu_one",
            workers=[Worker(1, plenty, gpu_memory=int(need.device / 2))],
        )  # fmt: skip
    check_block_memory(
        grid(2048), queries=200, batch=8, upsampler="jbu_one",
        workers=[Worker(1, plenty, gpu_memory=2 * need.device)],
    )  # fmt: skip


def test_one_strip_sources_count_the_whole_strip():
    """A 20000 px scene stored as one strip of every row: a block read decodes it all."""
    scene = GeoBox((20000, 20000), Affine.identity(), None)
    strip = Source(GeoboxTiles(scene, (20000, 20000)), tile_bands=3, itemsize=2)
    tiled = Source(GeoboxTiles(scene, (256, 256)), tile_bands=3, itemsize=2)
    need_strip = estimate_block_memory(grid(1024), queries=10, **BILINEAR, source=strip)
    need_tiled = estimate_block_memory(grid(1024), queries=10, **BILINEAR, source=tiled)
    read = grid(1024).block_at(0).read.shape
    assert need_strip.source == (20000 * 20000 - read[0] * read[1]) * 3 * 2
    assert need_tiled.source < 2 * 256 * (read[0] + read[1] + 512) * 3 * 2
    with pytest.raises(UserError, match="--block-size|workers with more memory"):
        check_block_memory(
            grid(1024), queries=10, **BILINEAR, source=strip,
            workers=[Worker(1, int(need_tiled.total / HEADROOM) + 1)],
        )  # fmt: skip


@pytest.mark.timeout(600)
@pytest.mark.parametrize("size, block", [(512, 512), (1024, 1024)])
def test_the_estimate_covers_the_measured_peak_rss_of_a_block_task(tmp_path, size, block):
    """One block task of the tiny model on a real (in-process) Dask worker, in a fresh
    process: its measured peak RSS increase is within the guard's estimate, and the
    estimate is not absurdly above it (<= 3x).

    The test process holds 1 GiB of ballast while the probe runs, as a full test run's
    process does after loading ViT-B models: a probe that read ru_maxrss (which Linux
    carries from parent to child across vfork/exec) measured that instead of the task."""
    import hardening_helpers as h

    scene = h.write_scene(tmp_path / "scene.tif", size, size)
    ballast = np.ones(1 << 27)  # 1 GiB, touched
    probe = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("guard_probe.py")),
         str(scene), str(tmp_path / "o.zarr"), str(block)],
        capture_output=True, text=True, env=h.env(), timeout=540,
    )  # fmt: skip
    del ballast
    assert probe.returncode == 0, probe.stderr[-3000:]
    figures = json.loads(probe.stdout.strip().splitlines()[-1])
    assert figures["blocks"] == 1
    assert figures["measured"] <= figures["estimate"] <= 3 * figures["measured"], figures
