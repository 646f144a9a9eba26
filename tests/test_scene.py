"""pipeline/scene/: opening scenes and windowed reads, with real files and real readers."""

from __future__ import annotations

import functools
import http.server
import logging
import multiprocessing
import os
import pickle
import re
import struct
import threading
from dataclasses import replace

import numpy as np
import pytest
import rasterio
from conftest import shared_file
from rasterio.crs import CRS
from rasterio.enums import ColorInterp
from rasterio.transform import from_origin
from rasterio.windows import Window

from reattn_batch.scene import (
    SceneInfo,
    WindowReadError,
    close_cached_datasets,
    open_scene,
    read_window,
    resolve_uri,
    stretch_to_uint8,
)
from reattn_batch.workers.errors import UserError


@pytest.fixture(autouse=True)
def _close_handles():
    yield
    close_cached_datasets()


def _direct(path, row0, col0, height, width, indexes=(1, 2, 3)) -> np.ndarray:
    """rasterio's own read of a window inside the scene, as (h, w, bands)."""
    with rasterio.open(path) as ds:
        data = ds.read(list(indexes), window=Window(col0, row0, width, height))
    return np.moveaxis(data, 0, -1)


def _write(path, data: np.ndarray, **profile) -> None:
    count, height, width = data.shape
    base = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": count,
        "dtype": str(data.dtype),
        "crs": "EPSG:25832",
        "transform": from_origin(500000, 5600000, 0.5, 0.5),
    }
    base.update(profile)
    with rasterio.open(path, "w", **base) as ds:
        ds.write(data)


# ----------------------------------------------------------------------------- real rasters


def test_koeln_metadata_and_windows():
    path = shared_file("rasters/oem_koeln_50.tif")
    scene = open_scene(str(path))
    assert (scene.height, scene.width) == (1000, 1000)
    assert CRS.from_wkt(scene.crs_wkt).to_epsg() == 25832
    assert scene.gsd == 0.5
    assert scene.bands == (1, 2, 3)
    assert scene.mask_band is None and scene.nodata is None and scene.stretch is None
    assert scene.dtype == "uint8" and not scene.is_zarr
    assert str(path.resolve()) in scene.identity and "size=" in scene.identity

    rgb, valid = read_window(scene, 200, 300, 64, 80)
    assert rgb.shape == (64, 80, 3) and rgb.dtype == np.uint8
    assert valid.shape == (64, 80) and valid.dtype == bool and valid.all()
    np.testing.assert_array_equal(rgb, _direct(path, 200, 300, 64, 80))

    # Hanging over the bottom-right corner: 40 rows and 30 cols inside.
    rgb, valid = read_window(scene, 960, 970, 100, 100)
    assert rgb.shape == (100, 100, 3)
    np.testing.assert_array_equal(rgb[:40, :30], _direct(path, 960, 970, 40, 30))
    assert valid[:40, :30].all()
    assert not valid[40:].any() and not valid[:, 30:].any()
    assert not rgb[40:].any() and not rgb[:, 30:].any()

    # Hanging over the top-left corner, and entirely outside.
    rgb, valid = read_window(scene, -5, -7, 20, 20)
    np.testing.assert_array_equal(rgb[5:, 7:], _direct(path, 0, 0, 15, 13))
    assert valid.sum() == 15 * 13 and not valid[:5].any() and not valid[:, :7].any()
    rgb, valid = read_window(scene, 1000, 0, 8, 8)
    assert not rgb.any() and not valid.any()


def test_rgb_byte_nodata_mask_matches_gdal_dataset_mask():
    path = shared_file("rasters/RGB.byte.tif")
    scene = open_scene(str(path))
    assert scene.nodata == 0.0 and scene.mask_band is None and not scene.internal_mask
    rgb, valid = read_window(scene, 0, 0, scene.height, scene.width)
    with rasterio.open(path) as ds:
        data = ds.read()
        dataset_mask = ds.dataset_mask()
        band_masks = ds.read_masks()
    # GDAL's dataset mask is the union of the band masks: invalid only where ALL bands are 0.
    np.testing.assert_array_equal(valid, dataset_mask != 0)
    np.testing.assert_array_equal(~valid, (data == 0).all(axis=0))
    # ... which is not any single band's mask (pixels with one zero band stay valid).
    assert (band_masks[0] != dataset_mask).any()
    assert 0 < (~valid).sum() < valid.size
    np.testing.assert_array_equal(rgb, np.moveaxis(data, 0, -1))

    # Same rule in a window hanging over the edge.
    rgb, valid = read_window(scene, 700, -10, 40, 50)
    np.testing.assert_array_equal(valid[:18, 10:], dataset_mask[700:, :40] != 0)
    assert not valid[18:].any() and not valid[:, :10].any()


def test_cog_with_internal_mask():
    path = shared_file("rasters/cogeo.tif")
    scene = open_scene(str(path))
    assert (scene.height, scene.width) == (1024, 1024)
    assert scene.internal_mask and scene.mask_band is None
    assert CRS.from_wkt(scene.crs_wkt).to_epsg() == 3857
    rgb, valid = read_window(scene, 500, 512, 100, 30)
    np.testing.assert_array_equal(rgb, _direct(path, 500, 512, 100, 30))
    with rasterio.open(path) as ds:
        expected = ds.dataset_mask(window=Window(512, 500, 30, 100)) != 0
    np.testing.assert_array_equal(valid, expected)


def test_internal_mask_band(tmp_path):
    rng = np.random.default_rng(5)
    data = rng.integers(1, 256, (3, 64, 48), dtype=np.uint8)
    mask = np.full((64, 48), 255, dtype=np.uint8)
    mask[20:40, 5:25] = 0
    path = tmp_path / "masked.tif"
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        _write(path, data)
        with rasterio.open(path, "r+") as ds:
            ds.write_mask(mask)
    scene = open_scene(str(path))
    assert scene.internal_mask and scene.mask_band is None and scene.nodata is None
    rgb, valid = read_window(scene, 10, -4, 40, 40)
    np.testing.assert_array_equal(valid[:, 4:], mask[10:50, :36] != 0)
    assert not valid[:, :4].any() and not rgb[~valid].any()
    np.testing.assert_array_equal(rgb[valid], np.moveaxis(data, 0, -1)[10:50, :36][valid[:, 4:]])


# ----------------------------------------------------------------------------- stretch


def test_uint16_single_band_scene_wide_stretch(tmp_path):
    rows, cols = np.mgrid[0:600, 0:1200]
    ramp = (1000 + 40 * cols + 3 * rows).astype(np.uint16)
    ramp[:, :100] = 0  # nodata border: 8% of the pixels, must not pull lo down to 0
    path = tmp_path / "ramp16.tif"
    _write(path, ramp[None], nodata=0)

    scene = open_scene(str(path))
    assert scene.bands == (1, 1, 1) and scene.dtype == "uint16" and scene.nodata == 0
    lo, hi = scene.stretch
    full = ramp[ramp != 0].astype(np.float64)
    exp_lo, exp_hi = np.percentile(full, [2, 98])
    tolerance = 0.005 * (full.max() - full.min())
    assert abs(lo - exp_lo) < tolerance and abs(hi - exp_hi) < tolerance
    assert lo > 1000  # the nodata zeros were excluded

    def by_hand(block: np.ndarray) -> np.ndarray:
        x = (block.astype(np.float32) - np.float32(lo)) * np.float32(255.0 / (hi - lo))
        x = np.floor(np.clip(x, 0, 255) + np.float32(0.5)).astype(np.uint8)
        x[block == 0] = 0
        return x

    rgb, valid = read_window(scene, 100, 50, 200, 300)
    window = ramp[100:300, 50:350]
    expected = by_hand(window)
    for channel in range(3):
        np.testing.assert_array_equal(rgb[..., channel], expected)
    np.testing.assert_array_equal(valid, window != 0)
    # Float64 arithmetic agrees to within one grey level.
    x64 = np.floor(np.clip((window - lo) * 255.0 / (hi - lo), 0, 255) + 0.5)
    assert np.abs(expected[valid].astype(int) - x64[valid]).max() <= 1

    # Another window over some of the same pixels: identical values there.
    other, _ = read_window(scene, 250, 300, 100, 500)
    np.testing.assert_array_equal(other[:50, :50], rgb[150:, 250:])

    # A user stretch replaces the estimate.
    fixed = open_scene(str(path), stretch=(2000, 12000))
    assert fixed.stretch == (2000.0, 12000.0)
    rgb2, _ = read_window(fixed, 100, 50, 200, 300)
    np.testing.assert_array_equal(rgb2[..., 0], stretch_to_uint8(window, 2000, 12000) * valid)
    with pytest.raises(UserError, match="stretch"):
        open_scene(str(path), stretch=(5, 5))


def test_stretch_helper_rounds_half_up_and_clips():
    values = np.array([[0, 10, 15, 20, 30, 40]], dtype=np.uint16)
    # lo 10, hi 20: 25.5 per unit -> 127.5 rounds up to 128.
    out = stretch_to_uint8(values, 10, 20)
    np.testing.assert_array_equal(out, [[0, 0, 128, 255, 255, 255]])
    floats = np.array([np.nan, 0.5, -1.0], dtype=np.float32)
    np.testing.assert_array_equal(stretch_to_uint8(floats, 0, 1), [0, 128, 0])


def test_float_stretch_with_nan(tmp_path):
    data = np.linspace(0, 1, 3 * 40 * 50, dtype=np.float32).reshape(3, 40, 50)
    data[:, :5, :5] = np.nan
    path = tmp_path / "f32.tif"
    _write(path, data)
    scene = open_scene(str(path))
    assert scene.dtype == "float32" and scene.bands == (1, 2, 3)
    lo, hi = scene.stretch
    np.testing.assert_allclose([lo, hi], np.nanpercentile(data, [2, 98]), rtol=1e-6)
    rgb, valid = read_window(scene, 0, 0, 40, 50)
    assert not valid[:5, :5].any() and valid.sum() == 40 * 50 - 25
    assert not rgb[:5, :5].any()


# ----------------------------------------------------------------------------- bands, masks


def test_rgba_alpha_zero_is_invalid(tmp_path):
    rng = np.random.default_rng(1)
    data = rng.integers(1, 256, (4, 60, 70), dtype=np.uint8)
    data[3] = 255
    data[3, 10:20, 30:50] = 0
    path = tmp_path / "rgba.tif"
    _write(path, data, photometric="RGB", alpha="YES")
    with rasterio.open(path) as ds:
        assert ds.colorinterp[3] == ColorInterp.alpha
    scene = open_scene(str(path))
    assert scene.bands == (1, 2, 3) and scene.mask_band == 4
    rgb, valid = read_window(scene, 0, 0, 60, 70)
    np.testing.assert_array_equal(valid, data[3] != 0)
    assert not rgb[10:20, 30:50].any()
    np.testing.assert_array_equal(rgb[valid], np.moveaxis(data[:3], 0, -1)[valid])


def test_colorinterp_order_and_grey_alpha(tmp_path):
    rng = np.random.default_rng(2)
    data = rng.integers(1, 256, (3, 20, 30), dtype=np.uint8)
    bgr = tmp_path / "bgr.tif"
    _write(bgr, data)
    with rasterio.open(bgr, "r+") as ds:
        ds.colorinterp = [ColorInterp.blue, ColorInterp.green, ColorInterp.red]
    scene = open_scene(str(bgr))
    assert scene.bands == (3, 2, 1)
    rgb, _ = read_window(scene, 0, 0, 20, 30)
    np.testing.assert_array_equal(rgb[..., 0], data[2])

    grey_alpha = tmp_path / "ga.tif"
    ga = data[:2].copy()
    ga[1, :5] = 0
    _write(grey_alpha, ga)
    with rasterio.open(grey_alpha, "r+") as ds:
        ds.colorinterp = [ColorInterp.gray, ColorInterp.alpha]
    scene = open_scene(str(grey_alpha))
    assert scene.bands == (1, 1, 1) and scene.mask_band == 2
    rgb, valid = read_window(scene, 0, 0, 20, 30)
    assert not valid[:5].any() and valid[5:].all()
    for channel in range(3):
        np.testing.assert_array_equal(rgb[5:, :, channel], ga[0, 5:])

    two = tmp_path / "two.tif"
    _write(two, data[:2])
    with pytest.raises(UserError, match="bands=1 .grey. or bands=2"):  # Python names
        open_scene(str(two))
    assert open_scene(str(two), bands=(2,)).bands == (2, 2, 2)


def test_five_bands_need_bands(tmp_path):
    data = np.stack([np.full((16, 24), 10 * (i + 1), dtype=np.uint8) for i in range(5)])
    data[:, 0, 0] = np.arange(5)  # distinct per band at one pixel too
    path = tmp_path / "five.tif"
    _write(path, data)
    with pytest.raises(UserError, match=r"5 bands.*bands=R,G,B"):
        open_scene(str(path))
    with pytest.raises(UserError, match=r"band 9\b.*5 bands"):
        open_scene(str(path), bands=(3, 2, 9))
    with pytest.raises(UserError, match="`bands`|bands="):
        open_scene(str(path), bands=(1, 2))
    scene = open_scene(str(path), bands=(3, 2, 1))
    assert scene.bands == (3, 2, 1)
    rgb, valid = read_window(scene, 0, 0, 16, 24)
    assert valid.all()
    np.testing.assert_array_equal(rgb[1, 1], [30, 20, 10])
    np.testing.assert_array_equal(rgb[0, 0], [2, 1, 0])
    grey = open_scene(str(path), bands=(5,))
    assert grey.bands == (5, 5, 5)
    np.testing.assert_array_equal(read_window(grey, 3, 3, 1, 1)[0][0, 0], [50, 50, 50])


# ----------------------------------------------------------------------------- Zarr


def test_zarr_matches_geotiff(tmp_path):
    rioxarray = pytest.importorskip("rioxarray")
    path = shared_file("rasters/oem_koeln_50.tif")
    store = tmp_path / "koeln.zarr"
    rioxarray.open_rasterio(path).to_dataset(name="image").to_zarr(store)

    tif = open_scene(str(path))
    zarr_scene = open_scene(str(store), variable="image")
    assert zarr_scene.is_zarr and zarr_scene.variable == "image"
    assert (zarr_scene.height, zarr_scene.width) == (tif.height, tif.width)
    assert zarr_scene.transform.almost_equals(tif.transform)
    assert CRS.from_wkt(zarr_scene.crs_wkt) == CRS.from_wkt(tif.crs_wkt)
    assert zarr_scene.gsd == pytest.approx(tif.gsd)
    assert zarr_scene.bands == (1, 2, 3) and zarr_scene.nodata is None
    for window in [(200, 300, 64, 80), (960, 970, 100, 100), (-3, 990, 10, 20)]:
        for got, want in zip(
            read_window(zarr_scene, *window), read_window(tif, *window), strict=True
        ):
            np.testing.assert_array_equal(got, want)
    # The only 3-D variable is found without naming it; zarr:// works too.
    assert open_scene(f"zarr://{store}").variable == "image"
    with pytest.raises(UserError, match=r"no variable 'labels'.*image"):
        open_scene(str(store), variable="labels")


def test_zarr_nodata_matches_geotiff(tmp_path):
    rioxarray = pytest.importorskip("rioxarray")
    path = shared_file("rasters/RGB.byte.tif")
    store = tmp_path / "landsat.zarr"
    rioxarray.open_rasterio(path).to_dataset(name="image").to_zarr(store)
    tif = open_scene(str(path))
    zarr_scene = open_scene(str(store))
    assert zarr_scene.nodata == 0.0
    for got, want in zip(
        read_window(zarr_scene, 650, -20, 100, 300),
        read_window(tif, 650, -20, 100, 300),
        strict=True,
    ):
        np.testing.assert_array_equal(got, want)


def test_unreadable_zarr(tmp_path):
    store = tmp_path / "broken.zarr"
    store.mkdir()
    (store / "zarr.json").write_text("{not json")
    with pytest.raises(UserError, match="Zarr"):
        open_scene(str(store))


# ----------------------------------------------------------------------------- errors


def test_missing_and_non_raster_files(tmp_path):
    missing = tmp_path / "nope.tif"
    with pytest.raises(UserError, match="no such file") as info:
        open_scene(str(missing))
    assert str(missing) in str(info.value)
    text = tmp_path / "x.tif"
    text.write_text("this is not a raster\n")
    with pytest.raises(UserError, match="not a raster") as info:
        open_scene(str(text))
    assert str(text) in str(info.value) and "\n" not in str(info.value)


def _tile_offsets(raw: bytes) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """TileOffsets and TileByteCounts of the first IFD of a little-endian classic TIFF."""
    assert raw[:4] == b"II*\x00"
    ifd = struct.unpack_from("<I", raw, 4)[0]
    types = {3: ("H", 2), 4: ("I", 4)}
    found = {}
    for i in range(struct.unpack_from("<H", raw, ifd)[0]):
        entry = ifd + 2 + 12 * i
        tag, typ, count, value = struct.unpack_from("<HHII", raw, entry)
        if tag in (324, 325):
            fmt, size = types[typ]
            where = entry + 8 if count * size <= 4 else value
            found[tag] = struct.unpack_from(f"<{count}{fmt}", raw, where)
    return found[324], found[325]


def test_corrupt_tile_raises_window_read_error(tmp_path):
    rng = np.random.default_rng(3)
    data = (rng.integers(0, 40, (3, 256, 256)) + np.arange(256) // 2).astype(np.uint8)
    path = tmp_path / "corrupt.tif"
    _write(path, data, tiled=True, blockxsize=64, blockysize=64, compress="deflate")
    raw = bytearray(path.read_bytes())
    offsets, sizes = _tile_offsets(bytes(raw))
    tile = 2 * 4 + 3  # tile row 2, tile col 3: rows 128:192, cols 192:256
    start, size = offsets[tile], sizes[tile]
    raw[start + size // 2 : start + size] = rng.integers(
        0, 256, size - size // 2, dtype=np.uint8
    ).tobytes()
    path.write_bytes(bytes(raw))

    scene = open_scene(str(path))  # the header is fine
    rgb, _ = read_window(scene, 0, 0, 64, 64)  # an intact tile reads
    np.testing.assert_array_equal(rgb, np.moveaxis(data[:, :64, :64], 0, -1))
    with pytest.raises(WindowReadError) as info:
        read_window(scene, 150, 200, 20, 20)
    err = info.value
    assert isinstance(err, UserError)
    message = str(err)
    assert "rows 150:170" in message and "cols 200:220" in message
    assert str(path) in message and "\n" not in message
    assert err.window == ((150, 170), (200, 220)) and not err.remote
    assert err.__cause__ is None and err.__context__ is None
    # It crosses Dask process boundaries, also with distributed's tblib pickling installed.
    again = pickle.loads(pickle.dumps(err))
    assert isinstance(again, WindowReadError) and str(again) == message
    assert again.window == err.window and again.cause == err.cause
    tblib = pytest.importorskip("tblib.pickling_support")
    tblib.install(err)
    again = pickle.loads(pickle.dumps(err))
    assert isinstance(again, WindowReadError) and str(again) == message
    # After the failure the handle is re-opened and intact tiles still read.
    np.testing.assert_array_equal(read_window(scene, 0, 0, 64, 64)[0], rgb)


def test_scene_without_crs(tmp_path, caplog):
    data = np.full((1, 30, 40), 7, dtype=np.uint8)
    path = tmp_path / "nocrs.tif"
    _write(path, data, crs=None, transform=from_origin(0, 30, 2, 2))
    with caplog.at_level(logging.WARNING, logger="reattn_batch.scene"):
        scene = open_scene(str(path))
    assert scene.crs_wkt is None and scene.gsd == 2.0
    assert any("CRS" in r.getMessage() for r in caplog.records)
    rgb, valid = read_window(scene, 0, 0, 30, 40)
    assert valid.all() and (rgb == 7).all()

    bare = tmp_path / "bare.tif"
    _write(bare, data, crs=None, transform=rasterio.Affine.identity())
    scene = open_scene(str(bare))
    assert scene.crs_wkt is None and scene.gsd == 1.0


# ----------------------------------------------------------------------------- remote


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """A static file server that honours single byte ranges, as GDAL's /vsicurl/ needs."""

    def log_message(self, *args):
        pass

    def send_head(self):
        path = self.translate_path(self.path)
        if not os.path.isfile(path):
            self.send_error(404)
            return None
        size = os.path.getsize(path)
        match = re.match(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        start, end = 0, size - 1
        if match:
            start, end = int(match.group(1)), min(int(match.group(2) or size - 1), size - 1)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if self.command != "HEAD":
            with open(path, "rb") as f:
                f.seek(start)
                self.wfile.write(f.read(end - start + 1))
        return None


@pytest.mark.timeout(60)
def test_http_cog_through_vsicurl():
    path = shared_file("rasters/cogeo.tif")
    handler = functools.partial(_RangeHandler, directory=str(path.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/{path.name}"
    try:
        remote = open_scene(url)
        assert remote.path == "/vsicurl/" + url and remote.identity.startswith(remote.path)
        local = open_scene(str(path))
        assert (remote.height, remote.width, remote.bands) == (local.height, local.width, (1, 2, 3))
        assert remote.internal_mask and remote.transform == local.transform
        for got, want in zip(
            read_window(remote, 100, 200, 50, 60), read_window(local, 100, 200, 50, 60), strict=True
        ):
            np.testing.assert_array_equal(got, want)
        with pytest.raises(UserError, match="404"):
            open_scene(url.replace("cogeo", "missing"))
    finally:
        server.shutdown()
        server.server_close()
    # The server is gone: a window not read yet fails as a retryable remote WindowReadError.
    with pytest.raises(WindowReadError, match="rows 900:1000, cols 900:1000") as info:
        read_window(remote, 900, 900, 100, 100)
    assert info.value.remote


# ----------------------------------------------------------------------------- plumbing


def test_uri_resolution(tmp_path):
    assert resolve_uri("https://h/a.tif") == ("gdal", "/vsicurl/https://h/a.tif")
    assert resolve_uri("s3://bucket/k/a.tif") == ("gdal", "/vsis3/bucket/k/a.tif")
    assert resolve_uri("/vsis3/bucket/a.tif") == ("gdal", "/vsis3/bucket/a.tif")
    assert resolve_uri("/vsicurl/http://h/a.tif") == ("gdal", "/vsicurl/http://h/a.tif")
    assert resolve_uri("s3://bucket/a.zarr") == ("zarr", "s3://bucket/a.zarr")
    assert resolve_uri(str(tmp_path / "a.zarr")) == ("zarr", str(tmp_path / "a.zarr"))
    assert resolve_uri(f"zarr://{tmp_path}/b") == ("zarr", f"{tmp_path}/b")
    assert resolve_uri(str(tmp_path / "a.tif")) == ("gdal", str(tmp_path / "a.tif"))


def _child_read(scene: SceneInfo, queue) -> None:
    queue.put(read_window(scene, 10, 20, 8, 8)[0])


def test_scene_pickles_and_reads_after_fork(tmp_path):
    rng = np.random.default_rng(4)
    data = rng.integers(0, 256, (3, 50, 60), dtype=np.uint8)
    path = tmp_path / "small.tif"
    _write(path, data)
    scene = open_scene(str(path))
    expected = read_window(scene, 10, 20, 8, 8)[0]  # caches a handle in this process
    clone = pickle.loads(pickle.dumps(scene))
    assert clone == scene
    np.testing.assert_array_equal(read_window(clone, 10, 20, 8, 8)[0], expected)
    if "fork" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("fork")
        queue = ctx.Queue()
        child = ctx.Process(target=_child_read, args=(scene, queue))
        child.start()
        got = queue.get(timeout=30)
        child.join(30)
        assert child.exitcode == 0
        np.testing.assert_array_equal(got, expected)
    # Replacing the stretch changes the output: nothing is computed per window.
    stretched = replace(scene, stretch=(0.0, 127.5))
    np.testing.assert_array_equal(
        read_window(stretched, 10, 20, 8, 8)[0],
        np.moveaxis(stretch_to_uint8(data[:, 10:18, 20:28], 0.0, 127.5), 0, -1),
    )
