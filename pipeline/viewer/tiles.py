"""Web-map tiles (WebMercatorQuad, 256 px) of a label store and of its scene, on request.

Labels (``LabelTiler``): each tile pixel takes the label of the store pixel that contains
its centre (nearest; labels are never blended). The tile's geometry comes from morecantile's
WebMercatorQuad (through rio-tiler), its pixel centres are taken to the store's CRS with
pyproj and to store pixels with the store's affine transform. What is read depends on the
zoom, so a tile never reads the whole store:

- ``ratio`` = store pixels per tile pixel. Below ``OVERVIEW_MIN_FACTOR`` the tile reads the
  window of the store it covers, at most about (256 x 8)^2 pixels.
- From ``OVERVIEW_MIN_FACTOR`` up the tile samples an in-memory overview: the labels reduced
  by the block-wise mode of ``outputs.quicklook.decimate_mode`` (the quicklook's, GDAL's
  ``mode``) to 1/8 of the store's size, and from it coarser levels by 2 x 2 mode. The
  overview is built once, on the first tile that needs it, by one streaming pass over the
  store (a 400 MP store gives a 6.25 MP level); later tiles read nothing from the store.

Imagery (``SceneTiler``): rio-tiler's ``Reader`` for GDAL rasters (a COG's overviews serve
the low zooms) and ``XarrayReader`` for Zarr scenes; a scene without overviews gets, like
the labels, a copy decimated by ``OVERVIEW_MIN_FACTOR`` (one read, in memory) for the tiles
at ``OVERVIEW_MIN_FACTOR`` scene pixels per tile pixel and more. The run's bands and its
scene-wide stretch are applied by the scene policy (``reattn_batch.scene.policy.to_rgb``), as
in the run's own reads. Imagery is resampled bilinearly: it is only a backdrop.
"""

from __future__ import annotations

import io
import logging
import math
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
from reattn_batch.scene import gdal_backend, zarr_backend
from reattn_batch.scene.policy import to_rgb, unique_bands
from reattn_batch.store import NODATA

log = logging.getLogger("reattn_batch")

TILE_SIZE = 256
#: From this many store pixels per tile pixel on, label tiles sample the mode overview.
OVERVIEW_MIN_FACTOR = 8
#: Highest zoom served (WebMercatorQuad's last level in rio-tiler's definition).
MAX_ZOOM = 24
#: The lowest zoom served shows the store's long side on at least this many pixels.
MIN_SIDE_PX = 16
#: Raw label tiles kept in memory (64 KiB each).
CACHE_TILES = 512


def web_mercator():
    """The WebMercatorQuad TileMatrixSet (morecantile) used for every tile."""
    from rio_tiler.constants import WEB_MERCATOR_TMS

    return WEB_MERCATOR_TMS


def encode_png(rgba: np.ndarray) -> bytes:
    """(h, w, 4) uint8 RGBA -> PNG bytes (fast compression: tiles are served locally)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgba), "RGBA").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


EMPTY_PNG = b""  # filled on first use by ``empty_png``


def empty_png() -> bytes:
    """A fully transparent 256 x 256 PNG (tiles with nothing to show)."""
    global EMPTY_PNG
    if not EMPTY_PNG:
        EMPTY_PNG = encode_png(np.zeros((TILE_SIZE, TILE_SIZE, 4), np.uint8))
    return EMPTY_PNG


def tile_pixel_centres(z: int, x: int, y: int, size: int = TILE_SIZE):
    """(X, Y) (size, size) float64 EPSG:3857 coordinates of the tile's pixel centres."""
    import morecantile

    b = web_mercator().xy_bounds(morecantile.Tile(x=x, y=y, z=z))
    step_x = (b.right - b.left) / size
    step_y = (b.top - b.bottom) / size
    xs = b.left + step_x * (np.arange(size) + 0.5)
    ys = b.top - step_y * (np.arange(size) + 0.5)
    return np.meshgrid(xs, ys)


def valid_tile(z: int, x: int, y: int) -> bool:
    """Whether (z, x, y) names a WebMercatorQuad tile served here."""
    return 0 <= z <= MAX_ZOOM and 0 <= x < 2**z and 0 <= y < 2**z


def _mode2x2(labels: np.ndarray) -> np.ndarray:
    """(h, w) uint8 -> (ceil(h/2), ceil(w/2)): the mode of each 2 x 2 cell.

    Nodata (255) wins only in a cell without valid labels; ties go to the smaller class
    index (the rules of ``reattn_batch.outputs.quicklook.decimate_mode``).
    """
    h, w = labels.shape
    padded = np.full((h + h % 2, w + w % 2), NODATA, np.uint8)
    padded[:h, :w] = labels
    h2, w2 = padded.shape[0] // 2, padded.shape[1] // 2
    v = padded.reshape(h2, 2, w2, 2).transpose(0, 2, 1, 3).reshape(h2, w2, 4)
    counts = (v[..., :, None] == v[..., None, :]).sum(-1, dtype=np.int32)
    counts[v == NODATA] = 0
    score = counts * 256 + (255 - v.astype(np.int32))
    best = np.argmax(score, axis=-1)
    return np.take_along_axis(v, best[..., None], axis=-1)[..., 0]


@dataclass
class Overview:
    """The mode pyramid: ``levels[k]`` reduces the store by OVERVIEW_MIN_FACTOR * 2**k.

    A store pixel (row, col) lies in cell (row * rows0 // height, col * cols0 // width) of
    level 0 (``decimate_mode``'s cells), and in that cell's index // 2**k at level k.
    """

    levels: list[np.ndarray]
    height: int
    width: int

    def cell(self, rows: np.ndarray, cols: np.ndarray, level: int):
        h0, w0 = self.levels[0].shape
        return (rows * h0 // self.height) >> level, (cols * w0 // self.width) >> level


class LabelTiler:
    """Label tiles, pixel queries and the overview of one label store (thread-safe)."""

    def __init__(self, label_store: Any) -> None:
        """label_store: ``reattn_batch.store.LabelStore`` (labels array, transform, CRS)."""
        from pyproj import CRS, Transformer

        self.ls = label_store
        self.height, self.width = label_store.height, label_store.width
        self.transform = label_store.transform
        self.inverse = ~label_store.transform
        crs = CRS.from_wkt(label_store.crs_wkt)
        self.to_store = Transformer.from_crs("EPSG:3857", crs, always_xy=True)
        self.to_lonlat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
        self.from_lonlat = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
        self._lock = threading.Lock()  # the tile cache
        self._overview_lock = threading.Lock()  # held while the overview is built
        self._overview: Overview | None = None
        self._cache: OrderedDict[tuple[int, int, int], np.ndarray] = OrderedDict()
        #: How the last tile was read, for logs and tests: ("window", (rows, cols)) or
        #: ("overview", factor); per thread.
        self.last_read = threading.local()

    # ------------------------------------------------------------------ geometry

    def store_pixels(self, xs: np.ndarray, ys: np.ndarray):
        """Store (fractional col, fractional row) of EPSG:3857 points."""
        sx, sy = self.to_store.transform(xs, ys)
        t = self.inverse
        cols = t.a * sx + t.b * sy + t.c
        rows = t.d * sx + t.e * sy + t.f
        return cols, rows

    def bounds_lonlat(self) -> tuple[float, float, float, float]:
        """(west, south, east, north) of the store in degrees (edges densified)."""
        t = self.transform
        xs = (t.c, t.c + t.a * self.width)
        ys = (t.f, t.f + t.e * self.height)
        return self.to_lonlat.transform_bounds(min(xs), min(ys), max(xs), max(ys), densify_pts=21)

    def native_zoom(self) -> int:
        """The zoom whose tile pixels are about the size of a store pixel at its centre."""
        cx, cy = self.transform @ (self.width / 2, self.height / 2)
        west, south, east, north = self.bounds_lonlat()
        from pyproj import Transformer

        merc = Transformer.from_crs(self.to_store.target_crs, "EPSG:3857", always_xy=True)
        x0, y0 = merc.transform(cx, cy)
        x1, y1 = merc.transform(cx + self.transform.a, cy + self.transform.e)
        res = max(abs(x1 - x0), abs(y1 - y0))
        return int(min(MAX_ZOOM, web_mercator().zoom_for_res(res)))

    def min_zoom(self) -> int:
        """The lowest useful zoom: the store's long side still spans MIN_SIDE_PX pixels."""
        shrink = math.ceil(math.log2(max(1.0, max(self.height, self.width) / MIN_SIDE_PX)))
        return max(0, self.native_zoom() - shrink)

    # ------------------------------------------------------------------ tiles

    def label_tile(self, z: int, x: int, y: int) -> np.ndarray:
        """(256, 256) uint8 labels of tile (z, x, y); 255 outside the store or unwritten."""
        key = (z, x, y)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        out = self.render(z, x, y)
        with self._lock:
            self._cache[key] = out
            while len(self._cache) > CACHE_TILES:
                self._cache.popitem(last=False)
        return out

    def render(self, z: int, x: int, y: int) -> np.ndarray:
        """label_tile without the cache (see the module docstring for what is read)."""
        xs, ys = tile_pixel_centres(z, x, y)
        fc, fr = self.store_pixels(xs, ys)
        out = np.full(fc.shape, NODATA, np.uint8)
        with np.errstate(invalid="ignore"):
            cols = np.floor(fc)
            rows = np.floor(fr)
        inside = (cols >= 0) & (cols < self.width) & (rows >= 0) & (rows < self.height)
        if not inside.any():
            self.last_read.value = ("none", None)
            return out
        cols = cols[inside].astype(np.int64)
        rows = rows[inside].astype(np.int64)
        ratio = max(
            float(np.nanmax(np.abs(np.diff(fc, axis=1)))),
            float(np.nanmax(np.abs(np.diff(fr, axis=0)))),
        )
        if ratio < OVERVIEW_MIN_FACTOR:
            r0, r1 = int(rows.min()), int(rows.max()) + 1
            c0, c1 = int(cols.min()), int(cols.max()) + 1
            window = np.asarray(self.ls.labels[r0:r1, c0:c1])
            self.last_read.value = ("window", window.shape)
            out[inside] = window[rows - r0, cols - c0]
            return out
        overview = self.overview()
        level = min(len(overview.levels) - 1, int(math.log2(ratio / OVERVIEW_MIN_FACTOR) + 1e-9))
        cell_rows, cell_cols = overview.cell(rows, cols, level)
        self.last_read.value = ("overview", OVERVIEW_MIN_FACTOR * 2**level)
        out[inside] = overview.levels[level][cell_rows, cell_cols]
        return out

    def overview(self) -> Overview:
        """The mode pyramid, built on first use (one streaming pass over the store)."""
        with self._overview_lock:
            if self._overview is None:
                from reattn_batch.outputs.quicklook import decimate_mode

                f = OVERVIEW_MIN_FACTOR
                h0, w0 = -(-self.height // f), -(-self.width // f)
                log.info("building the label overview (%d x %d)", h0, w0)
                levels = [decimate_mode(self.ls, h0, w0)]
                while max(levels[-1].shape) > 1:
                    levels.append(_mode2x2(levels[-1]))
                self._overview = Overview(levels, self.height, self.width)
            return self._overview

    # ------------------------------------------------------------------ pixels

    def pixel(self, lon: float, lat: float) -> tuple[int, int] | None:
        """(row, col) of the store pixel containing (lon, lat), or None outside the store."""
        sx, sy = self.from_lonlat.transform(lon, lat)
        if not (math.isfinite(sx) and math.isfinite(sy)):
            return None
        fc, fr = self.inverse @ (sx, sy)
        row, col = math.floor(fr), math.floor(fc)
        if 0 <= row < self.height and 0 <= col < self.width:
            return row, col
        return None


def colour_table(colormap: dict[int, tuple], visible: set[int] | None) -> np.ndarray:
    """(256, 4) uint8 RGBA lookup: class colours opaque where visible, the rest transparent.

    visible: class indices to draw (None: all classes in the colour map).
    """
    lut = np.zeros((256, 4), np.uint8)
    for index, rgba in colormap.items():
        if index == NODATA or (visible is not None and index not in visible):
            continue
        lut[index] = (*rgba[:3], 255)
    return lut


# ----------------------------------------------------------------------------- imagery


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
