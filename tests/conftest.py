"""Shared fixtures: where the real test data lives, and an isolated cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def koeln_window_tif(directory: Path, width: int, height: int, name: str = "koeln.tif") -> str:
    """A width x height window (at col 50, row 100) of the real Koeln tile, written as a
    tiled GeoTIFF into ``directory``; keeps scene-job tests fast."""
    import rasterio
    from rasterio.windows import Window

    src = shared_file("rasters/oem_koeln_50.tif")
    out = directory / name
    with rasterio.open(src) as ds:
        window = Window(50, 100, width, height)
        profile = ds.profile | {
            "width": width, "height": height, "transform": ds.window_transform(window),
            "tiled": True, "blockxsize": 256, "blockysize": 256,
        }  # fmt: skip
        with rasterio.open(out, "w", **profile) as dst:
            dst.write(ds.read(window=window))
    return str(out)


def framed_rgb_byte(directory: Path) -> Path:
    """RGB.byte.tif (Landsat, nodata 0 border) placed in a 300 px wider nodata frame on its
    top and left, so that whole crops hold nothing but nodata: ``directory/framed.tif``."""
    import numpy as np
    import rasterio

    scene = directory / "framed.tif"
    with rasterio.open(shared_file("rasters/RGB.byte.tif")) as ds:
        data = np.zeros((3, ds.height + 300, ds.width + 300), np.uint8)
        data[:, 300:, 300:] = ds.read()
        origin = ds.transform * (-300, -300)
        transform = rasterio.Affine(ds.transform.a, 0, origin[0], 0, ds.transform.e, origin[1])
        profile = ds.profile | {"height": data.shape[1], "width": data.shape[2],
                                "transform": transform}  # fmt: skip
        with rasterio.open(scene, "w", **profile) as out:
            out.write(data)
    return scene


def labels_of(store):
    """The `labels` array of an output store."""
    import zarr

    return zarr.open_group(str(store), mode="r")["labels"][:]


def shared_file(relative: str) -> Path:
    """A file under ../shared/data, or skip the test with a reason."""
    path = SHARED_DATA / relative
    if not path.is_file():
        pytest.skip(f"real test data {relative} not found under {SHARED_DATA} (../shared absent)")
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Text embeddings and downloads go to a per-session temporary cache."""
    monkeypatch.setenv("REATTN_BATCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


# Dask's INFO chatter drowns test failures; read when distributed is imported.
os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
