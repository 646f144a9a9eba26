"""``--block-size auto``: the block edge that keeps halo redundancy under the target.

Labels do not depend on the block size (global crop grid, global-order sums,
global-coordinate resampling), so the block size is a pure cost trade-off: small
blocks re-run many crops in their halos, large blocks need more worker memory.
``auto`` takes the smallest multiple of the Zarr chunk whose exact halo redundancy
(:meth:`BlockGrid.halo_redundancy`, computed separably per axis, so cheap for any
scene) is at most :data:`reattn_batch.settings.HALO_TARGET` for this scene and model grid,
among the sizes the memory guard lets through (``fits``). When no size that fits meets
the target, the one that fits with the least redundancy is taken and a warning names it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable

from reattn_batch.grid.grids import BlockGrid, ModelGrid
from reattn_batch.settings import HALO_TARGET
from reattn_batch.store.layout import CHUNK

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class BlockChoice:
    """The block edge chosen (native px) and its halo redundancy (0.1 = 10 % extra crops)."""

    block: int
    redundancy: float
    meets_target: bool


def candidate_sizes(native_shape: tuple[int, int], chunk: int = CHUNK) -> list[int]:
    """Multiples of ``chunk`` up to the first that holds the whole scene in one block."""
    return [k * chunk for k in range(1, math.ceil(max(native_shape) / chunk) + 1)]


def choose_block_size(
    model_grid: ModelGrid,
    crop: int,
    stride: int,
    *,
    target: float = HALO_TARGET,
    fits: Callable[[BlockGrid], bool] | None = None,
) -> BlockChoice:
    """The smallest chunk multiple with halo redundancy <= ``target`` that ``fits``
    (module docstring); ``fits`` None: no memory cap. None fits at all: the smallest size
    (the memory guard then refuses it with its own message)."""
    best: BlockChoice | None = None
    for size in candidate_sizes(model_grid.native_shape):
        grid = BlockGrid(model_grid=model_grid, block=size, crop=crop, stride=stride)
        if fits is not None and not fits(grid):
            continue
        redundancy = grid.halo_redundancy()
        if redundancy <= target:
            return BlockChoice(size, redundancy, True)
        if best is None or redundancy < best.redundancy:
            best = BlockChoice(size, redundancy, False)
    if best is None:
        return BlockChoice(CHUNK, float("nan"), False)
    log.warning(
        "block_size='auto': no block that fits a worker's memory keeps the halo redundancy "
        "under %.0f %%; using %d px with %.1f %% redundancy (give workers more memory to "
        "lower it)", 100 * target, best.block, 100 * best.redundancy,
    )  # fmt: skip
    return best
