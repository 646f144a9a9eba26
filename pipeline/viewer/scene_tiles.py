"""Imagery tiles (WebMercatorQuad, 256 px) of the scene a label store was made from.

Imagery (``SceneTiler``): rio-tiler's ``Reader`` for GDAL rasters (a COG's overviews serve
the low zooms) and ``XarrayReader`` for Zarr scenes; a scene without overviews gets, like
the labels, a copy decimated by ``OVERVIEW_MIN_FACTOR`` (one read, in memory) for the tiles
at ``OVERVIEW_MIN_FACTOR`` scene pixels per tile pixel and more. The run's bands and its
scene-wide stretch are applied by the scene policy (``reattn_batch.scene.policy.to_rgb``), as
in the run's own reads. Imagery is resampled bilinearly: it is only a backdrop.
"""

from __future__ import annotations

import logging
import threading
import warnings
from typing import Any

import numpy as np

from reattn_batch.scene import gdal_backend, zarr_backend
from reattn_batch.scene.policy import to_rgb, unique_bands
from reattn_batch.viewer.png import empty_png, encode_png
from reattn_batch.viewer.tile_grid import (
    OVERVIEW_MIN_FACTOR,
    TILE_SIZE,
    tile_pixel_centres,
    web_mercator,
)

log = logging.getLogger("reattn_batch")


class SceneTiler:
    """Imagery tiles of the scene a store was made from (see the module docstring)."""

    def __init__(self, scene: Any) -> None:
        """scene: ``reattn_batch.scene.SceneInfo`` (path, bands, stretch, CRS, size)."""
        from pyproj import CRS, Transformer
        from rio_tiler.errors import NoOverviewWarning

        # A scene without overviews is expected: its low zooms come from the decimated copy.
        # (A process-wide filter: catch_warnings is not thread-safe.)
        warnings.filterwarnings("ignore", category=NoOverviewWarning)
        self.scene = scene
        self.unique, _ = unique_bands(scene)
        self.to_scene = Transformer.from_crs(
            "EPSG:3857", CRS.from_wkt(scene.crs_wkt), always_xy=True
        )
        self._lock = threading.Lock()
        self._small: Any = None  # decimated DataArray for the low zooms, built on first use
        #: A GDAL scene with overviews serves every zoom itself (rio-tiler picks the level).
        self.direct = not scene.is_zarr and self._has_overviews()

    def _has_overviews(self) -> bool:
        return bool(gdal_backend.handle(self.scene).overviews(self.unique[0]))

    def _ratio(self, z: int, x: int, y: int) -> float:
        """Scene pixels per tile pixel, at the tile's centre."""
        xs, ys = tile_pixel_centres(z, x, y, size=2)
        sx, sy = self.to_scene.transform(xs, ys)
        t = ~self.scene.transform
        cols, rows = t @ (sx, sy)
        return max(abs(cols[0, 1] - cols[0, 0]), abs(rows[1, 0] - rows[0, 0])) * 2 / TILE_SIZE

    def tile(self, z: int, x: int, y: int) -> bytes:
        """PNG bytes (RGBA, transparent outside the scene and where it is nodata)."""
        from rio_tiler.errors import TileOutsideBounds

        ratio = self._ratio(z, x, y)
        try:
            if not self.scene.is_zarr and (self.direct or ratio < OVERVIEW_MIN_FACTOR):
                from rio_tiler.io import Reader

                with Reader(self.scene.path) as src:
                    img = src.tile(
                        x, y, z, tilesize=TILE_SIZE, indexes=self.unique,
                        reproject_method="bilinear", resampling_method="bilinear",
                    )  # fmt: skip
            else:
                img = self._xarray_tile(z, x, y, ratio)
        except TileOutsideBounds:
            return empty_png()
        if img is None:
            return empty_png()
        return encode_png(self._rgba(np.asarray(img.data), np.asarray(img.mask)))

    def _rgba(self, data: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """(k, h, w) distinct bands + (h, w) rio-tiler mask -> (h, w, 4) uint8 RGBA, through
        the scene policy (R, G, B order, the run's stretch) like the run's own reads."""
        valid = mask > 0
        rgb = to_rgb(self.scene, data, valid)
        return np.dstack([rgb, np.where(valid, 255, 0).astype(np.uint8)])

    def _xarray_tile(self, z: int, x: int, y: int, ratio: float):
        from rio_tiler.errors import TileOutsideBounds
        from rio_tiler.io import XarrayReader

        if ratio >= OVERVIEW_MIN_FACTOR:
            da = self.small()
        else:
            da = self._zarr_window(z, x, y)
            if da is None:
                return None
        try:
            with XarrayReader(da) as src:
                return src.tile(x, y, z, tilesize=TILE_SIZE, reproject_method="bilinear")
        except TileOutsideBounds:
            return None

    def _zarr_array(self):
        """The scene's (band, y, x) DataArray, its bands selected, CRS set (lazy)."""
        s = self.scene
        da = zarr_backend.open_xarray(s.path)[s.variable]
        band_dim, y_dim, x_dim = zarr_backend.image_dims(s.path, da)
        if band_dim is None:
            band_dim = "band"
            da = da.expand_dims(band_dim)
        da = da.rio.write_crs(s.crs_wkt)
        da = da.isel({band_dim: [b - 1 for b in self.unique]})
        da = da.transpose(band_dim, y_dim, x_dim)
        if self.scene.nodata is not None:
            da = da.rio.write_nodata(self.scene.nodata)
        return da

    def _zarr_window(self, z: int, x: int, y: int):
        """The full-resolution window of a Zarr scene under tile (z, x, y), or None."""
        import morecantile

        b = web_mercator().xy_bounds(morecantile.Tile(x=x, y=y, z=z))
        xs, ys = np.meshgrid(np.linspace(b.left, b.right, 17), np.linspace(b.bottom, b.top, 17))
        sx, sy = self.to_scene.transform(xs, ys)  # the tile's edges and a grid inside
        cols, rows = (~self.scene.transform) @ (sx, sy)
        r0, r1 = max(0, int(np.floor(rows.min())) - 2), min(self.scene.height, int(rows.max()) + 3)
        c0, c1 = max(0, int(np.floor(cols.min())) - 2), min(self.scene.width, int(cols.max()) + 3)
        if r1 - r0 < 2 or c1 - c0 < 2:
            return None
        da = self._zarr_array()
        return da.isel({da.rio.y_dim: slice(r0, r1), da.rio.x_dim: slice(c0, c1)}).load()

    def small(self):
        """The scene decimated by OVERVIEW_MIN_FACTOR (built once, in memory)."""
        with self._lock:
            if self._small is None:
                self._small = self._build_small()
            return self._small

    def _build_small(self):
        import xarray as xr
        from affine import Affine

        f = OVERVIEW_MIN_FACTOR
        s = self.scene
        log.info("building the imagery overview of %s (1/%d)", s.path, f)
        if s.is_zarr:
            da = self._zarr_array()
            # Dask chunks of whole cells: the mean streams over the scene.
            da = da.chunk({da.rio.y_dim: 256 * f, da.rio.x_dim: 256 * f})
            small = da.coarsen({da.rio.y_dim: f, da.rio.x_dim: f}, boundary="pad").mean()
            small = small.astype(np.float32).load()
            return small.rio.write_crs(s.crs_wkt)
        from rio_tiler.io import Reader

        h, w = -(-s.height // f), -(-s.width // f)
        with Reader(s.path) as src:
            img = src.preview(indexes=self.unique, height=h, width=w, resampling_method="average")
        t = s.transform @ Affine.scale(s.width / w, s.height / h)
        data = np.asarray(img.data).astype(np.float32)
        data[:, np.asarray(img.mask) == 0] = np.nan
        xs = t.c + t.a * (np.arange(w) + 0.5)
        ys = t.f + t.e * (np.arange(h) + 0.5)
        da = xr.DataArray(data, dims=("band", "y", "x"), coords={"y": ys, "x": xs})
        da = da.rio.write_crs(s.crs_wkt).rio.write_transform(t).rio.write_nodata(np.nan)
        return da
