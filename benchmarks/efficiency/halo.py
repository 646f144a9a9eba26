"""Halo redundancy per block size for square scenes (arithmetic on the block grid)."""

from __future__ import annotations

import math
from typing import Any

from efficiency.inputs import mosaic_side
from reattn_batch.grid.grids import BlockGrid, ModelGrid


def halo_table(
    sizes: tuple[float, ...], blocks: tuple[int, ...], f: float, crop: int, stride: int, batch: int
) -> list[dict[str, Any]]:
    """Crops and forward calls per block size, for square scenes on a model grid scaled by f."""
    rows = []
    for mp in sizes:
        side = mosaic_side(mp)
        model_grid = ModelGrid.for_gsd((side, side), 1.0, 1.0 / f)
        for block in blocks:
            grid = BlockGrid(model_grid=model_grid, block=block, crop=crop, stride=stride)
            per_block = [len(grid.crops_touching(b.model)) for b in grid.blocks()]
            rows.append(
                {
                    "megapixels": mp,
                    "side": side,
                    "model_grid": list(model_grid.shape),
                    "block": block,
                    "blocks": len(grid),
                    "scene_crops": len(grid.crops()),
                    "crops_run": sum(per_block),
                    "halo_redundancy": grid.halo_redundancy(),
                    "calls_ideal": math.ceil(sum(per_block) / batch),
                    "calls_padded": sum(math.ceil(n / batch) for n in per_block),
                }
            )
    return rows
