"""Opening a scene: metadata only, plus one decimated read for the stretch of non-uint8
data; returns a picklable :class:`SceneInfo` (SPEC 3.2)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from reattn_batch.scene import gdal_backend, zarr_backend
from reattn_batch.scene.info import SceneInfo
from reattn_batch.scene.policy import STRETCH_PERCENTILES, STRETCH_SAMPLE_LONG_SIDE
from reattn_batch.scene.stac_item import ASSET_DRIVER
from reattn_batch.scene.uri import error_text, is_remote, resolve_scene, resolve_uri
from reattn_batch.settings import SceneSettings, from_keywords
from reattn_batch.workers.errors import InputError, UserError

log = logging.getLogger("reattn_batch.scene")


def open_scene(
    uri: str,
    bands: tuple[int, ...] | None = None,
    stretch: tuple[float, float] | None = None,
    variable: str | None = None,
    asset: str | None = None,
    remote_asset: bool = False,
) -> SceneInfo:
    """Metadata of a scene (and its stretch for non-uint8 data); see the module docstring.

    remote_asset: ``uri`` is an asset that a remote STAC Item named (a store records it so):
        opened as a GeoTIFF/COG only, as when the Item itself is given."""
    checked = from_keywords(SceneSettings, {"bands": bands, "stretch": stretch})
    bands, stretch = checked.bands, checked.stretch
    uri, item = resolve_scene(uri, asset)
    kind, path = resolve_uri(uri)
    if kind == "gdal" and not is_remote(path) and not Path(path).exists():
        raise InputError(f"{uri}: no such file; pass the path of a GeoTIFF/COG or a .zarr store")
    if kind == "zarr" and "://" not in path and not Path(path).exists():
        raise InputError(f"{uri}: no such file or Zarr store; check the path")
    if kind == "zarr":
        scene = zarr_backend.open_dataset(uri, path, bands, variable)
    else:  # an asset a remote Item names: GeoTIFF/COG only, never a file naming others
        remote = remote_asset or (item is not None and item.remote)
        driver = ASSET_DRIVER if remote else None
        scene = gdal_backend.open_dataset(uri, path, bands, driver)
    if item is not None:
        scene.stac_item, scene.scene_datetime = item.item_href, item.datetime
        log.info("%s: STAC Item %s, asset %r", uri, item.item_id, item.asset_key)
    if scene.crs_wkt is None:
        log.warning("%s: no CRS; outputs will be in pixel coordinates", uri)
    if stretch is not None:
        scene.stretch = stretch
    elif scene.dtype != "uint8":
        scene.stretch = _estimate_stretch(scene)
        log.info(
            "%s: %s data, scene-wide stretch %g..%g (2nd..98th percentile) -> 0..255",
            uri,
            scene.dtype,
            *scene.stretch,
        )
    return scene


def _estimate_stretch(scene: SceneInfo) -> tuple[float, float]:
    """2nd/98th percentiles of the valid pixels of a ~512 px decimated read, all bands pooled."""
    long_side = max(scene.height, scene.width)
    factor = max(1, long_side // STRETCH_SAMPLE_LONG_SIDE)
    try:
        if scene.is_zarr:
            values, ok = zarr_backend.read(scene, 0, scene.height, 0, scene.width, step=factor)
        else:
            shape = (-(-scene.height // factor), -(-scene.width // factor))
            values, ok = gdal_backend.read(scene, 0, scene.height, 0, scene.width, out_shape=shape)
    except UserError:
        raise
    except Exception as exc:
        raise InputError(
            f"{scene.path}: could not read a decimated sample for the stretch "
            f"({error_text(exc)}); pass stretch=lo,hi or check the file"
        ) from None
    sample = values[:, ok].astype(np.float64).ravel()
    if sample.size == 0:
        dtype = np.dtype(scene.dtype)
        lo, hi = (
            (float(np.iinfo(dtype).min), float(np.iinfo(dtype).max))
            if dtype.kind in "ui"
            else (0.0, 1.0)
        )
        log.warning(
            "%s: no valid pixels in the stretch sample; using %g..%g (pass --stretch lo,hi)",
            scene.path,
            lo,
            hi,
        )
        return lo, hi
    lo, hi = (float(v) for v in np.percentile(sample, STRETCH_PERCENTILES))
    if not hi > lo:
        log.warning(
            "%s: the 2nd and 98th percentiles of the stretch sample are equal (%g): the scene "
            "is (nearly) constant and maps to one grey; pass --stretch LO,HI to choose the range",
            scene.path,
            lo,
        )
        hi = lo + 1.0
    return lo, hi
