"""A Zarr scene through xarray/rioxarray: the variable named by ``variable`` or the only
3-D (band, y, x) (or 2-D (y, x)) data variable; CRS and transform from its CF grid mapping."""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np
from affine import Affine

from reattn_batch.grid.raster import raster_geobox
from reattn_batch.paths import ZARR_MARKERS
from reattn_batch.scene.handles import cached, handle_key
from reattn_batch.scene.identity import zarr_identity
from reattn_batch.scene.info import SceneInfo
from reattn_batch.scene.policy import choose_bands, pixel_size, unique_bands, valid_mask
from reattn_batch.scene.uri import error_text, fsspec_options
from reattn_batch.workers.errors import InputError

log = logging.getLogger("reattn_batch.scene")


def open_xarray(path: str):
    import rioxarray  # noqa: F401  (registers the .rio accessor)
    import xarray as xr

    return xr.open_dataset(
        path,
        engine="zarr",
        storage_options=fsspec_options(path) or None,  # timeouts of a remote store
        chunks=None,  # lazy backend arrays: no Dask graph inside a Dask task, no caching
        cache=False,
        mask_and_scale=False,  # keep the stored dtype; nodata comes from _FillValue
        decode_coords="all",  # grid_mapping variables become coordinates (CRS survives)
    )


def image_variable(uri: str, ds: Any, variable: str | None) -> Any:
    names = [str(n) for n in ds.data_vars]
    if variable is not None:
        if variable not in ds.data_vars:
            raise InputError(
                f"{uri} has no variable {variable!r}; its variables are: "
                f"{', '.join(names) or 'none'}; pass variable=NAME"
            )
        return ds[variable]
    candidates = [n for n in names if ds[n].ndim == 3] or [n for n in names if ds[n].ndim == 2]
    if len(candidates) != 1:
        raise InputError(
            f"{uri}: cannot tell which variable is the image (variables: "
            f"{', '.join(names) or 'none'}); pass variable=NAME"
        )
    return ds[candidates[0]]


def image_dims(uri: str, da: Any) -> tuple[str | None, str, str]:
    """(band_dim or None, y_dim, x_dim) of a 2-D or 3-D variable."""
    if da.ndim not in (2, 3):
        raise InputError(
            f"{uri}: variable {da.name!r} has dims {da.dims}; need (band, y, x) or (y, x)"
        )
    try:
        y_dim, x_dim = da.rio.y_dim, da.rio.x_dim
    except Exception:
        y_dim, x_dim = da.dims[-2], da.dims[-1]
    rest = [d for d in da.dims if d not in (y_dim, x_dim)]
    return (rest[0] if rest else None), str(y_dim), str(x_dim)


def open_dataset(
    uri: str, path: str, bands: tuple[int, ...] | None, variable: str | None
) -> SceneInfo:
    try:
        ds = open_xarray(path)
    except Exception as exc:
        raise InputError(
            f"{uri}: not a readable Zarr store ({error_text(exc)}); pass a Zarr store "
            "with a (band, y, x) variable"
        ) from None
    with ds, warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)  # rioxarray's Affine use
        da = image_variable(uri, ds, variable)
        band_dim, y_dim, x_dim = image_dims(uri, da)
        count = da.sizes[band_dim] if band_dim else 1
        chosen, mask_band = choose_bands(uri, count, bands, None)
        dtype = np.dtype(da.dtype)
        if dtype.kind not in "uif":
            raise InputError(f"{uri}: {dtype} pixels are not supported; pass integer or float data")
        crs = da.rio.crs
        try:
            transform = da.rio.transform()
        except Exception:
            log.warning("%s: no geotransform in the Zarr store; using pixel coordinates", uri)
            transform = Affine.identity()
        nodata = da.rio.nodata
        try:
            identity = store_identity(path, str(da.name))
        except Exception as exc:  # a remote store that fails or stalls while sampled
            server = " and its server" if "://" in path else ""
            raise InputError(
                f"{uri}: could not read its chunks ({type(exc).__name__}: {error_text(exc)}); "
                f"check the store{server}"
            ) from None
        shape = (int(da.sizes[y_dim]), int(da.sizes[x_dim]))
        return SceneInfo(
            geobox=raster_geobox(shape, transform, crs.to_wkt() if crs else None),
            gsd=pixel_size(uri, transform),
            bands=chosen,
            mask_band=mask_band,
            nodata=None if nodata is None else float(nodata),
            dtype=str(dtype),
            stretch=None,
            identity=identity,
            path=path,
            variable=str(da.name),
            tile=_chunk_tile(da),
            tile_bands=int(da.encoding.get("chunks", (1,))[0]) if band_dim else 1,
        )


def _chunk_tile(da: Any) -> tuple[int, int] | None:
    """The (rows, cols) of a Zarr variable's chunks (its last two axes), if known."""
    chunks = da.encoding.get("chunks") or da.encoding.get("preferred_chunks")
    if isinstance(chunks, dict):
        chunks = tuple(chunks.values())
    if not chunks or len(chunks) < 2:
        return None
    return int(chunks[-2]), int(chunks[-1])


def store_identity(path: str, variable: str) -> str:
    """Metadata files, chunk listing and a chunk content sample (scene/identity.py)."""
    return zarr_identity(path, variable, ZARR_MARKERS)


def handle(scene: SceneInfo):
    def opener():
        ds = open_xarray(scene.path)
        da = ds[scene.variable]
        return (ds, da, *image_dims(scene.path, da))

    return cached(handle_key(scene), opener)


def read(scene: SceneInfo, r0: int, r1: int, c0: int, c1: int, step: int = 1):
    _, da, band_dim, y_dim, x_dim = handle(scene)
    unique, _ = unique_bands(scene)
    sel = {y_dim: slice(r0, r1, step), x_dim: slice(c0, c1, step)}
    if band_dim is not None:
        sel[band_dim] = [b - 1 for b in unique]
        values = da.isel(sel).transpose(band_dim, y_dim, x_dim).values
    else:
        values = da.isel(sel).transpose(y_dim, x_dim).values[None]
    return values, valid_mask(scene, values, None)
