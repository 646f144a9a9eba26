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
    Source,
    Worker,
    check_block_memory,
    estimate_block_memory,
)
from reattn_batch.workers.errors import UserError

BILINEAR = {"batch": 8, "upsampler": "bilinear"}

# Expected figures below are worked out by hand from the formula in pipeline/run/guard.py's
# docstring and README "Resilient jobs" (float32 = 4 bytes), never by calling the guard:
#   logits  = 4 Q (2 model_px + 4 native_px)        the sum and mean, 4 native copies
#   crops   = 4 batch Q 224^2 (+ 3 batch 512 224^2 4 with SimFeatUp: upsampled features)
#   image   = read_px (3 + 1 + 3*4) + crop_box_px (1 + 2*3*4)
#   source  = decoded source tiles of the read beyond the read window itself
#   model   = 1.2e9 (ViT-B/16), runtime = 2e8, both once per worker
#   a worker's tasks may use 80 % of its memory limit (or of its GPU's memory).
# Geometry of block 0 of the 20000 px native grid (f = 1, crops 224 at stride 112), by
# hand: a B px block is its own model region; the crops touching [0, B) start at
# 0, 112, ..., the last start below B, so the crop box (and the read) is that start + 224:
#   B = 1024: last start 1008 -> crop box 1232^2;  B = 1536: 1456 -> 1680^2;
#   B = 2048: 2016 -> 2240^2.
MODEL, RUNTIME = 1_200_000_000, 200_000_000
CROP_PX = 224 * 224
IMAGE = {1024: 1232**2 * 41, 1536: 1680**2 * 41, 2048: 2240**2 * 41}  # 41 = 16 + 25


def logits_bytes(queries: int, block: int) -> int:
    return 4 * queries * (2 + 4) * block**2  # model region == native region here


def grid(block: int, size: int = 20000) -> BlockGrid:
    return BlockGrid(ModelGrid.for_gsd((size, size), 0.5, 0.5), block, 224, 112)


def test_estimate_of_one_block_task_by_hand():
    need = estimate_block_memory(grid(1024), queries=10, **BILINEAR)
    assert need.logits == 4 * 10 * 6 * 1024**2 == 251_658_240
    assert need.crops == 4 * 8 * 10 * CROP_PX == 16_056_320
    assert need.image == 1232**2 * (3 + 1 + 12) + 1232**2 * (1 + 24) == 62_230_784
    assert (need.model, need.runtime, need.source) == (MODEL, RUNTIME, 0)
    assert need.total == 251_658_240 + 16_056_320 + 62_230_784 + MODEL + RUNTIME
    big = estimate_block_memory(grid(2048), queries=40, **BILINEAR)
    assert big.logits == 4 * 40 * 6 * 2048**2 and big.image == 2240**2 * 41
    jbu = estimate_block_memory(grid(2048), queries=40, batch=8, upsampler="jbu_one")
    assert jbu.crops == 4 * 8 * 40 * CROP_PX + 3 * 8 * 512 * CROP_PX * 4


def test_refusal_suggests_a_block_size_that_fits():
    # Q = 100: 1024 px needs 2_516_582_400 + 160_563_200 + 62_230_784 + 1.4e9 = 4.14e9,
    # 1536 px needs 5_662_310_400 + 160_563_200 + 115_718_400 + 1.4e9 = 7.34e9; a worker
    # of 7.5e9 bytes offers 80 % = 6e9: 1024 fits, 1536 does not.
    need = {b: logits_bytes(100, b) + 4 * 8 * 100 * CROP_PX + IMAGE[b] + MODEL + RUNTIME
            for b in (1024, 1536, 2048)}  # fmt: skip
    assert need[1024] < 6e9 < need[1536]
    limit = 7_500_000_000
    with pytest.raises(UserError, match="block_size=1024"):
        check_block_memory(grid(2048), queries=100, **BILINEAR, worker_limit=limit)
    fitting = check_block_memory(grid(1024), queries=100, **BILINEAR, worker_limit=limit)
    assert fitting.total == need[1024] == 4_139_376_384
    unlimited = check_block_memory(grid(2048), queries=100, **BILINEAR, worker_limit=None)
    assert unlimited.total == need[2048]
    with pytest.raises(UserError, match="fewer classes"):
        check_block_memory(
            grid(2048), queries=100, **BILINEAR, worker_limit=MODEL
        )  # nothing fits: the model alone is over 80 % of the worker


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
    # Q = 30, 2048 px: one task adds logits + crops + image = 3_273_789_440 bytes; one
    # thread: 1.4e9 + that = 4.67e9, four: 1.4e9 + 4 x that = 14.50e9 (13.5 GiB). A worker
    # of 12.5e9 bytes offers 10e9.
    task = logits_bytes(30, 2048) + 4 * 8 * 30 * CROP_PX + IMAGE[2048]
    assert task == 3_273_789_440
    assert MODEL + RUNTIME + task < 10e9 < MODEL + RUNTIME + 4 * task
    limit = 12_500_000_000
    check_block_memory(grid(2048), queries=30, **BILINEAR, workers=[Worker(1, limit)])
    with pytest.raises(UserError, match=r"4 threads x one block task\) needs about 13\.5 GiB"):
        check_block_memory(grid(2048), queries=30, **BILINEAR, workers=[Worker(4, limit)])


def test_a_worker_without_a_limit_does_not_switch_the_guard_off():
    # Q = 30, 2048 px, one thread: 4.67e9 bytes (above); 80 % of 2e9 (1.9 GiB) is too little.
    small = 2_000_000_000
    with pytest.raises(UserError, match="needs about 4.4 GiB but a worker has 1.9 GiB"):
        check_block_memory(
            grid(2048), queries=30, **BILINEAR, workers=[Worker(1, None), Worker(1, small)]
        )
    check_block_memory(grid(2048), queries=30, **BILINEAR, workers=[Worker(1, None)])


def test_gpu_workers_are_checked_against_the_gpu_memory():
    # On the GPU: the accumulators (half the logits' bytes), a batch and the model.
    # Q = 200, 2048 px, jbu_one: 10_066_329_600 + 321_126_400 + 2_466_250_752 + 1.2e9
    # = 14.05e9 bytes: over 80 % of a 16e9 GPU (12.8e9), under 80 % of a 20e9 one (16e9).
    accumulators = logits_bytes(200, 2048) // 2
    device = accumulators + 4 * 8 * 200 * CROP_PX + 3 * 8 * 512 * CROP_PX * 4 + MODEL
    assert device == 14_053_706_752
    plenty = 10**12
    with pytest.raises(UserError, match="13.1 GiB but a worker has 14.9 GiB of GPU memory"):
        check_block_memory(
            grid(2048), queries=200, batch=8, upsampler="jbu_one",
            workers=[Worker(1, plenty, gpu_memory=16_000_000_000)],
        )  # fmt: skip
    check_block_memory(
        grid(2048), queries=200, batch=8, upsampler="jbu_one",
        workers=[Worker(1, plenty, gpu_memory=20_000_000_000)],
    )  # fmt: skip


def test_one_strip_sources_count_the_whole_strip():
    """A 20000 px scene stored as one strip of every row: a block read decodes it all."""
    scene = GeoBox((20000, 20000), Affine.identity(), None)
    strip = Source(GeoboxTiles(scene, (20000, 20000)), tile_bands=3, itemsize=2)
    tiled = Source(GeoboxTiles(scene, (256, 256)), tile_bands=3, itemsize=2)
    need_strip = estimate_block_memory(grid(1024), queries=10, **BILINEAR, source=strip)
    need_tiled = estimate_block_memory(grid(1024), queries=10, **BILINEAR, source=tiled)
    # the 1232 px read decodes the whole strip, or 5 + 1 (unaligned) tiles of 256 per axis
    assert need_strip.source == (20000 * 20000 - 1232 * 1232) * 3 * 2
    assert need_tiled.source == (1536 * 1536 - 1232 * 1232) * 3 * 2
    # totals: 1_729_945_344 (Q = 10, above) + source: tiled 1.73e9 fits 80 % of 2.5e9,
    # the strip's 4.12e9 does not
    worker = [Worker(1, 2_500_000_000)]
    check_block_memory(grid(1024), queries=10, **BILINEAR, source=tiled, workers=worker)
    with pytest.raises(UserError, match="block_size=|workers with more memory"):
        check_block_memory(grid(1024), queries=10, **BILINEAR, source=strip, workers=worker)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("size, block", [(512, 512), (1024, 1024)])
def test_the_estimate_covers_the_measured_peak_rss_of_a_block_task(tmp_path, size, block):
    """One block task of the tiny model on a real (in-process) Dask worker, in a fresh
    process: its measured peak RSS increase is within the guard's estimate, and the
    estimate is not absurdly above it (<= 3x).

    The test process holds 1 GiB of ballast while the probe runs, as a full test run's
    process does after loading ViT-B models: a probe that read ru_maxrss (which Linux
    carries from parent to child across vfork/exec) measured that instead of the task."""
    import cli_helpers as h

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
