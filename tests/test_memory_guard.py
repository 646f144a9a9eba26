"""The memory guard refuses block sizes that would not fit a worker, before any work."""

from __future__ import annotations

import pytest
from distributed import LocalCluster

from pipeline.cli import main
from pipeline.grid.grids import BlockGrid, ModelGrid
from pipeline.run.guard import FLOAT, MODEL_BYTES, check_block_memory, estimate_block_memory
from tests.conftest import koeln_window_tif
from workers.errors import UserError

BILINEAR = {"batch": 8, "upsampler": "bilinear"}


def grid(block: int, size: int = 20000) -> BlockGrid:
    return BlockGrid(ModelGrid.for_gsd((size, size), 0.5, 0.5), block, 224, 112)


def test_estimate_scales_with_queries_and_block_area():
    small, big = (
        estimate_block_memory(grid(1024), queries=10, **BILINEAR),
        estimate_block_memory(grid(2048), queries=10, **BILINEAR),
    )
    assert small.model == big.model == int(MODEL_BYTES)
    # logits: Q x 4 bytes x (2 model-region + 2 native) pixels; an interior-free first block
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
