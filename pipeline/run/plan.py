"""Step 1 of a run: open the scene (metadata only) and lay out its grids (SPEC 3.1)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path

from reattn_batch.grid.block_size import choose_block_size
from reattn_batch.grid.grids import BlockGrid, ModelGrid
from reattn_batch.run.request import SceneRequest
from reattn_batch.scene import SceneInfo, open_scene
from reattn_batch.settings import AUTO_BLOCK, GSD_FACTOR_BOUNDS
from reattn_batch.workers.errors import InputError

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Plan:
    """The scene, its block grid (with the model and crop grids) and the model GSD."""

    scene: SceneInfo
    grid: BlockGrid
    model_gsd: float


def plan(request: SceneRequest) -> Plan:
    """Open the scene and lay out the grids; fails fast, before any cluster or store."""
    settings = request.settings
    refuse_label_store(request.scene)
    scene = open_scene(
        request.scene,
        bands=settings.bands,
        stretch=settings.stretch,
        variable=settings.variable,
        asset=settings.asset,
    )
    model_gsd = settings.gsd or scene.gsd
    check_gsd_factor(scene.gsd, model_gsd, crs_units(scene.crs_wkt))
    model_grid = ModelGrid.for_gsd((scene.height, scene.width), scene.gsd, model_gsd)
    grid = block_grid(model_grid, settings.block_size, request.model.cfg)
    return Plan(scene=scene, grid=grid, model_gsd=model_gsd)


def refuse_label_store(scene: str) -> None:
    """Refuse a SCENE that is a label store of reattn-batch (labels, not imagery)."""
    from reattn_batch.scene.uri import is_remote, resolve_uri
    from reattn_batch.store.create import is_our_store

    kind, path = resolve_uri(scene)
    if kind == "zarr" and not is_remote(path) and is_our_store(Path(path)):
        raise InputError(
            f"{scene} is a label store reattn-batch wrote, not imagery; pass the scene it "
            "was mapped from (its 'scene' attribute names it)"
        )


def block_grid(
    model_grid: ModelGrid,
    block_size: int | str,
    cfg,
    fits: Callable[[BlockGrid], bool] | None = None,
) -> BlockGrid:
    """The block grid for ``block_size`` (a number, or ``auto`` resolved for this scene
    and model grid, within ``fits``: the memory guard; pipeline/grid/block_size.py)."""
    if block_size == AUTO_BLOCK:
        choice = choose_block_size(model_grid, cfg.crop, cfg.stride, fits=fits)
        if fits is not None:
            log.info(
                "--block-size auto: %d px, halo redundancy %.1f %%",
                choice.block, 100 * choice.redundancy,
            )  # fmt: skip
        block_size = choice.block
    return BlockGrid(model_grid=model_grid, block=block_size, crop=cfg.crop, stride=cfg.stride)


def crs_units(crs_wkt: str | None) -> str:
    """The unit of a CRS's first axis as words for a message ("degree", "metre"; "pixel"
    without a CRS): the unit of GSDs on that scene."""
    if crs_wkt is None:
        return "pixel"
    from pyproj import CRS

    try:
        axes = CRS.from_wkt(crs_wkt).axis_info
    except Exception:  # the GeoBox already checked the WKT; a CRS without axes
        return "CRS unit"
    return axes[0].unit_name if axes else "CRS unit"


def check_gsd_factor(native_gsd: float, model_gsd: float, units: str = "CRS unit") -> None:
    """Refuse a model GSD whose factor native/model lies outside ``GSD_FACTOR_BOUNDS``.
    ``units``: the scene CRS's unit (a geographic scene's GSDs are in degrees)."""
    lo, hi = GSD_FACTOR_BOUNDS
    factor = native_gsd / model_gsd
    if not lo <= factor <= hi:
        raise InputError(
            f"gsd={model_gsd:g} on a scene of GSD {native_gsd:g} ({units}) resamples it by "
            f"x{factor:.3g}; "
            f"the model grid must be between 1/{1 / lo:g} and {hi:g} times the native one: "
            f"pass a `gsd` between {native_gsd / hi:g} and {native_gsd / lo:g}"
        )
