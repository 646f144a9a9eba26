"""Label tiles (WebMercatorQuad, 256 px) of a label store, on request.

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

Why not rio-tiler's ``XarrayReader`` (which ``scene_tiles`` uses for imagery): measured on
tests/test_viewer.py's planted store (600 x 800 px of 1 m in UTM 32N), its
``tile(..., reproject_method="nearest")`` (rio-tiler 9.4, rioxarray 0.19) matched the
nearest-centre tile on 18 of 20 tiles at zooms 15-19 but not on two at zoom 17, one pixel
each: tile (17, 68069, 43911) pixel (253, 74) has its centre at store row 350.000226
(inside row 350, nodata 255) and XarrayReader gave row 349's label 0; likewise
(17, 68067, 43910) pixel (122, 149), row 50.000204, gave 0 instead of 1. GDAL's warper
interpolates the transform linearly between exactly projected points (error threshold
0.125 px), so a centre within a fraction of a pixel of a store pixel edge may land on the
neighbour; rio-tiler passes no warp options to change that. The overview has the same
problem and one more: ``decimate_mode``'s cells are uneven when the store's side is not a
multiple of 8 (cell = row * rows0 // height), which no affine transform on a DataArray
describes. So the tiler maps tile pixel centres itself (pyproj, exactly, per pixel).
"""

from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from reattn_batch.store import NODATA
from reattn_batch.viewer.tile_grid import (
    MAX_ZOOM,
    OVERVIEW_MIN_FACTOR,
    tile_pixel_centres,
    web_mercator,
)

log = logging.getLogger("reattn_batch")

#: The lowest zoom served shows the store's long side on at least this many pixels.
MIN_SIDE_PX = 16
#: Raw label tiles kept in memory (64 KiB each).
CACHE_TILES = 512


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
