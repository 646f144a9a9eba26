"""`--block-size auto` and the separable halo count (issue 9 item 4): pure arithmetic."""

from __future__ import annotations

import numpy as np
import pytest

from reattn_batch.grid.block_size import choose_block_size
from reattn_batch.grid.grids import BlockGrid, ModelGrid
from reattn_batch.grid.resample import Axis
from reattn_batch.run.guard import fits_worker
from reattn_batch.settings import DEFAULT_BLOCK_SIZE, HALO_TARGET, SceneSettings
from reattn_batch.workers.sliding import crop_grid


def model_grid(native: tuple[int, int], f: float) -> ModelGrid:
    return ModelGrid.for_gsd(native, 1.0, 1.0 / f)


@pytest.mark.parametrize("size", [8000, 20000])  # 64 MP and 400 MP
@pytest.mark.parametrize("f", [1.0, 0.77, 0.5, 1.6])
def test_default_block_keeps_halo_under_target(size, f):
    assert DEFAULT_BLOCK_SIZE == "auto" == SceneSettings().block_size
    grid = model_grid((size, size), f)
    choice = choose_block_size(grid, 224, 112)
    assert choice.meets_target and choice.block % 512 == 0
    redundancy = BlockGrid(grid, choice.block, 224, 112).halo_redundancy()
    assert redundancy == choice.redundancy <= HALO_TARGET
    smaller = BlockGrid(grid, choice.block - 512, 224, 112).halo_redundancy()
    assert choice.block == 512 or smaller > HALO_TARGET  # the smallest that meets it


def brute_force_runs(grid: BlockGrid) -> int:
    """Crops touching each block's model box, enumerated crop by crop over all blocks."""
    crops = crop_grid(*grid.model_grid.shape, grid.crop, grid.stride)
    return sum(sum(c.intersects(b.model) for c in crops) for b in grid.blocks())


@pytest.mark.parametrize(
    "native, f, block",
    [
        ((1500, 1100), 1.0, 512),
        ((1500, 1100), 0.77, 512),
        ((1300, 2100), 0.5, 1024),
        ((900, 700), 1.6, 512),
        ((700, 900), 1.3, 1024),
        ((200, 150), 1.0, 512),  # smaller than a crop
    ],
)
def test_separable_count_equals_enumeration(native, f, block):
    grid = BlockGrid(model_grid(native, f), block, 224, 112)
    runs = brute_force_runs(grid)
    crops = len(crop_grid(*grid.model_grid.shape, 224, 112))
    assert grid.crop_runs() == runs
    assert grid.halo_redundancy() == pytest.approx(runs / crops - 1.0, abs=1e-12)
    for axis in (0, 1):  # the per-axis model ranges are the blocks' model boxes
        boxes = [grid.block_at(i).model for i in range(len(grid))]
        ranges = {(b.y0, b.y1) if axis == 0 else (b.x0, b.x1) for b in boxes}
        assert ranges == set(grid.axis_model_ranges(axis))


@pytest.mark.parametrize(
    "native, block, counts",
    [((1500, 1100), 512, (3, 3)), ((1024, 512), 512, (2, 1)), ((200, 150), 512, (1, 1))],
)
def test_blocks_tile_the_scene_once_in_row_major_order(native, block, counts):
    grid = BlockGrid(model_grid(native, 1.0), block, 224, 112)
    assert grid.counts == counts and len(grid) == counts[0] * counts[1]
    cover = np.zeros(native, np.int64)
    for i, b in enumerate(grid.blocks()):
        row, col = divmod(i, counts[1])
        assert (b.native.y0, b.native.x0) == (row * block, col * block)
        cover[b.native.y0 : b.native.y1, b.native.x0 : b.native.x1] += 1
    assert (cover == 1).all()  # every native pixel in exactly one block


def test_each_crop_has_one_owner_block_that_runs_it():
    for f in (1.0, 0.77, 1.6):
        grid = BlockGrid(model_grid((1500, 1100), f), 512, 224, 112)
        for crop in grid.crops():
            owner = grid.block_at(grid.owner_of(crop))
            assert crop in grid.crops_touching(owner.model)


@pytest.mark.parametrize("native, model", [(1000, 770), (1000, 1600), (37, 500), (500, 37)])
def test_source_range_from_end_taps_equals_all_taps(native, model):
    axis = Axis(native, model)
    for from_model in (True, False):
        n_targets = native if from_model else model
        for start, stop in [(0, n_targets), (3, 17), (n_targets - 5, n_targets), (10, 11)]:
            i0, i1, _ = axis.taps(start, stop, from_model=from_model)
            expected = int(np.min(i0)), int(np.max(i1)) + 1
            assert axis.sources_for_targets(start, stop, from_model=from_model) == expected


def test_auto_is_capped_by_the_memory_guard():
    grid = model_grid((20000, 20000), 1.0)
    memory = {"queries": 6, "batch": 1, "upsampler": "bilinear"}
    unlimited = choose_block_size(grid, 224, 112)
    small = BlockGrid(grid, 1024, 224, 112)
    from reattn_batch.run.guard import estimate_block_memory

    limit = int(estimate_block_memory(small, **memory).total / 0.8) + 1  # 1024 fits, 1536 not

    def fits(g):
        return fits_worker(g, worker_limit=limit, **memory)

    capped = choose_block_size(grid, 224, 112, fits=fits)
    assert unlimited.block > 1024 and capped.block <= 1024 and not capped.meets_target
    assert capped.redundancy == min(
        BlockGrid(grid, b, 224, 112).halo_redundancy() for b in (512, 1024)
    )


def test_block_size_flag_values():
    assert SceneSettings(block_size="1024").block_size == 1024
    assert SceneSettings(block_size="auto").block_size == "auto"
    with pytest.raises(ValueError, match="auto"):
        SceneSettings(block_size=1000)


def test_fingerprint_ignores_block_size_and_resume_keeps_the_stores(tmp_path):
    """Labels do not depend on the block size, so neither does the fingerprint; a resumed
    run takes the store's recorded block size (its completion records are per block)."""
    import zarr
    from conftest import koeln_window_tif

    from reattn_batch.cli import main
    from reattn_batch.run.fingerprint import run_fingerprint
    from reattn_batch.run.plan import plan
    from reattn_batch.run.request import SceneRequest
    from reattn_batch.settings import ModelSettings
    from reattn_batch.workers.classes import parse_classes
    from reattn_batch.workers.model_spec import describe_weights

    scene = koeln_window_tif(tmp_path, 600, 500)
    spec = ModelSettings(method="segearth-ov", clip_weights="random", upsampler="bilinear")
    spec = spec.model_spec(["clip_model=ViT-T-16-test"])
    prints = set()
    for block in (512, 1024, "auto"):
        request = SceneRequest(
            scene=scene, model=spec, classes=parse_classes("building,road"),
            out=tmp_path / "x.zarr", settings=SceneSettings(block_size=block),
        )  # fmt: skip
        layout = plan(request)
        prints.add(run_fingerprint(request, layout, describe_weights(spec)))
    assert len(prints) == 1
    store = tmp_path / "s.zarr"
    args = ["run", scene, "--classes", "building,road", "--clip-weights", "random",
            "--set", "clip_model=ViT-T-16-test", "--upsampler", "bilinear",
            "--method", "segearth-ov", "--out", str(store)]  # fmt: skip
    main([*args, "--block-size", "512"])
    first = zarr.open_group(str(store), mode="r")["labels"][:]
    main([*args, "--block-size", "1024", "--resume"])  # same run: accepted, store's 512 kept
    attrs = zarr.open_group(str(store), mode="r").attrs.asdict()
    assert attrs["block_size"] == 512 and attrs["blocks_computed_last_run"] == 0
    assert np.array_equal(zarr.open_group(str(store), mode="r")["labels"][:], first)
