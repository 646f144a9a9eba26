"""The benchmark's inputs: mirrored GeoTIFF mosaics of N MP and a random upsampler."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from rasterio.windows import Window

from efficiency.settings import MOSAIC_TILE
from reattn_batch.workers.upsampler import JBUOne, JBUStack


def mosaic_side(megapixels: float) -> int:
    return max(1, round(math.sqrt(megapixels * 1e6)))


def _mirrored_index(n: int, period: int) -> np.ndarray:
    """0..n-1 mapped into a source axis of ``period`` px, every other tile reversed."""
    tile, offset = np.divmod(np.arange(n), period)
    return np.where(tile % 2 == 1, period - 1 - offset, offset)


def build_mosaic(source: Path, out: Path, side: int) -> dict[str, Any]:
    """A side x side GeoTIFF (tiled 512, deflate) tiled from ``source`` with mirrored
    flips; the source's CRS, pixel size and origin. Written in strips of 512 rows."""
    start = time.perf_counter()
    with rasterio.open(source) as src:
        base = src.read()
        profile = {
            "driver": "GTiff",
            "width": side,
            "height": side,
            "count": src.count,
            "dtype": src.dtypes[0],
            "crs": src.crs,
            "transform": src.transform,
            "nodata": src.nodata,
            "tiled": True,
            "blockxsize": MOSAIC_TILE,
            "blockysize": MOSAIC_TILE,
            "compress": "deflate",
            "interleave": "pixel",
            "BIGTIFF": "IF_SAFER",
            "NUM_THREADS": "ALL_CPUS",  # deflate on every core
        }
        colorinterp = src.colorinterp
    _, h, w = base.shape
    rows, cols = _mirrored_index(side, h), _mirrored_index(side, w)
    with rasterio.open(out, "w", **profile) as dst:
        dst.colorinterp = colorinterp
        for r0 in range(0, side, MOSAIC_TILE):
            r1 = min(r0 + MOSAIC_TILE, side)
            strip = base[:, rows[r0:r1]][:, :, cols]
            dst.write(strip, window=Window(0, r0, side, r1 - r0))
    return {
        "path": str(out),
        "side": side,
        "megapixels": side * side / 1e6,
        "file_mb": out.stat().st_size / 1e6,
        "build_s": time.perf_counter() - start,
    }


def random_upsampler_checkpoint(kind: str, out: Path, seed: int = 0) -> Path:
    """A Lightning-style checkpoint of a seeded random jbu_one/jbu_stack (512-d)."""
    torch.manual_seed(seed)
    module = (JBUOne if kind == "jbu_one" else JBUStack)(512)
    state = {f"upsampler.{k}": v.detach().clone() for k, v in module.state_dict().items()}
    torch.save({"state_dict": state}, out)
    return out
