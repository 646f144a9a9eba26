"""Step 1 of a run: open the scene (metadata only) and lay out its grids (SPEC 3.1)."""

from __future__ import annotations

import dataclasses

from pipeline.grid.grids import BlockGrid, ModelGrid
from pipeline.run.request import SceneRequest
from pipeline.scene import SceneInfo, open_scene


@dataclasses.dataclass(frozen=True)
class Plan:
    """The scene, its block grid (with the model and crop grids) and the model GSD."""

    scene: SceneInfo
    grid: BlockGrid
    model_gsd: float


def plan(request: SceneRequest) -> Plan:
    """Open the scene and lay out the grids; fails fast, before any cluster or store."""
    settings = request.settings
    scene = open_scene(
        request.scene,
        bands=settings.bands,
        stretch=settings.stretch,
        variable=settings.variable,
        asset=settings.asset,
    )
    model_gsd = settings.gsd or scene.gsd
    model_grid = ModelGrid.for_gsd((scene.height, scene.width), scene.gsd, model_gsd)
    cfg = request.model.cfg
    grid = BlockGrid(
        model_grid=model_grid, block=settings.block_size, crop=cfg.crop, stride=cfg.stride
    )
    return Plan(scene=scene, grid=grid, model_gsd=model_gsd)
