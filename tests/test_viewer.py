"""`reattn-batch view`: the real server, in a real headless Chromium (Debian's chromium and
chromium-driver, driven by Selenium), on a store with planted label regions built with the
store module, over a GeoTIFF scene; and label tiles against the store's own labels sampled
at the tile's pixel centres (WebMercatorQuad computed here by hand, pyproj, affine)."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from conftest import shared_file
from odc.geo.geobox import GeoBox
from PIL import Image
from pyproj import Transformer
from rasterio.crs import CRS

from reattn_batch.store import (
    StoreLayout,
    class_palette,
    create_store,
    mark_block_done,
    update_attrs,
    write_block,
)

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

CLASSES = ["background", "building", "road", "water"]
PALETTE = class_palette(len(CLASSES), 0)
H, W = 600, 800
CHUNK = 256
# 1 m pixels in UTM 32N (Koeln): the map's Web Mercator is rotated ~1.6 degrees from it.
TRANSFORM = Affine(1.0, 0, 356000, 0, -1.0, 5646000)
CRS_WKT = CRS.from_epsg(32632).to_wkt()
# Planted regions (rows, cols) -> class; 255 is a nodata hole; the rest is background (0).
REGIONS = {
    1: (slice(50, 250), slice(50, 350)),
    2: (slice(50, 250), slice(450, 750)),
    3: (slice(350, 550), slice(50, 350)),
    255: (slice(350, 550), slice(450, 750)),
}
IMAGERY = (200, 170, 60)  # the scene is one flat colour, unlike every class colour
MERCATOR_HALF = 20037508.342789244  # half the side of the WebMercatorQuad square (m)


def planted_labels() -> np.ndarray:
    out = np.zeros((H, W), np.uint8)
    for value, (rows, cols) in REGIONS.items():
        out[rows, cols] = value
    return out


def make_store(
    folder: Path, name: str = "planted.labels.zarr", class_names: list[str] = CLASSES
) -> Path:
    """The planted store (with confidence) and its scene GeoTIFF under ``folder``."""
    scene = folder / "scene.tif"
    with rasterio.open(
        scene, "w", driver="GTiff", width=W, height=H, count=3, dtype="uint8",
        crs=CRS_WKT, transform=TRANSFORM, tiled=True, blockxsize=256, blockysize=256,
    ) as dst:  # fmt: skip
        dst.write(np.broadcast_to(np.array(IMAGERY, np.uint8)[:, None, None], (3, H, W)))
    labels = planted_labels()
    confidence = np.full((H, W), 127, np.uint8)
    confidence[labels == 1] = 254
    confidence[labels == 255] = 255
    attrs = {
        "software": "reattn-batch",
        "scene": str(scene),
        "bands": [1, 2, 3],
        "stretch": None,
        "classes": {
            "names": class_names,
            "synonyms": [[c] for c in class_names],
            "background_index": 0,
        },
        "method": "reattnclip",
        "upsampler": "bilinear",
        "hyperparameters": {"alpha": 0.2},
        "weights": {"clip": {"source": "random", "name": "ViT-T-16-test", "random": True}},
        "random_weights": True,
    }
    store = folder / name
    layout = StoreLayout(GeoBox((H, W), TRANSFORM, CRS_WKT), chunk=CHUNK, with_confidence=True)
    create_store(
        store, layout, attrs=attrs, class_names=class_names, background_index=0, blocks=(1, 1)
    )
    write_block(store, 0, 0, labels, confidence)
    mark_block_done(store, 0)
    update_attrs(store, complete=True)
    return store


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Path:
    return make_store(tmp_path_factory.mktemp("viewer"))


# ----------------------------------------------------------------------------- tiles


def store_pixels_of_tile(z: int, x: int, y: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols), each (256, 256) int: the store pixel containing the centre of each
    pixel of WebMercatorQuad tile (z, x, y), computed by hand (may fall outside)."""
    size = 2 * MERCATOR_HALF / 2**z
    left, top = -MERCATOR_HALF + x * size, MERCATOR_HALF - y * size
    centres = (np.arange(256) + 0.5) * size / 256
    mx, my = np.meshgrid(left + centres, top - centres)
    sx, sy = Transformer.from_crs(3857, 32632, always_xy=True).transform(mx, my)
    cols, rows = ~TRANSFORM @ (sx, sy)
    return np.floor(rows).astype(int), np.floor(cols).astype(int)


def independent_tile(labels: np.ndarray, z: int, x: int, y: int) -> np.ndarray:
    """The store's labels at the pixel centres of WebMercatorQuad tile (z, x, y), by nearest
    (the store pixel containing each centre), 255 outside; no code of the viewer used."""
    rows, cols = store_pixels_of_tile(z, x, y)
    inside = (rows >= 0) & (rows < H) & (cols >= 0) & (cols < W)
    out = np.full((256, 256), 255, np.uint8)
    out[inside] = labels[rows[inside], cols[inside]]
    return out


def tile_of_centre(z: int) -> tuple[int, int]:
    """(x, y) of the tile holding the store's centre, by hand."""
    cx, cy = TRANSFORM @ (W / 2, H / 2)
    mx, my = Transformer.from_crs(32632, 3857, always_xy=True).transform(cx, cy)
    size = 2 * MERCATOR_HALF / 2**z
    return int((mx + MERCATOR_HALF) // size), int((MERCATOR_HALF - my) // size)


def gdal_labels(store: Path) -> np.ndarray:
    """The store's labels read by GDAL (not by zarr-python, which the viewer uses)."""
    with rasterio.open(f'ZARR:"{store}":/labels') as ds:
        return ds.read(1)


@pytest.mark.parametrize("z", [15, 16, 17, 18, 19])
def test_label_tile_is_the_store_sampled_by_nearest_at_pixel_centres(planted, z):
    from reattn_batch.store import open_store
    from reattn_batch.viewer.label_tiles import LabelTiler

    labels = gdal_labels(planted)
    assert (labels == planted_labels()).all()
    tiler = LabelTiler(open_store(planted))
    x, y = tile_of_centre(z)
    for dx, dy in ((0, 0), (1, 0), (0, 1), (-1, -1)):
        got = tiler.render(z, x + dx, y + dy)
        assert np.array_equal(got, independent_tile(labels, z, x + dx, y + dy)), (z, dx, dy)
        kind, shape = tiler.last_read.value
        if kind == "window":  # a window of the store, never more than the tile covers
            assert shape[0] * shape[1] <= (256 * 8 + 2) ** 2
    assert set(np.unique(tiler.render(z, x, y))) <= {0, 1, 2, 3, 255}


def test_low_zooms_read_a_mode_overview_not_the_store(tmp_path):
    """At zoom 12-13 (12-24 store pixels per tile pixel) tiles come from the in-memory
    overview: they still show the planted regions, and stay the same once the store's label
    chunks are deleted, while a full-resolution tile then reads the (now empty) store."""
    from reattn_batch.store import open_store
    from reattn_batch.viewer.label_tiles import LabelTiler
    from reattn_batch.viewer.tile_grid import OVERVIEW_MIN_FACTOR

    store = make_store(tmp_path)
    labels = planted_labels()
    tiler = LabelTiler(open_store(store))
    low = {}
    for z in (12, 13):
        x, y = tile_of_centre(z)
        low[z] = tiler.render(z, x, y)
        kind, factor = tiler.last_read.value
        assert kind == "overview" and factor >= OVERVIEW_MIN_FACTOR
        # Mode resampling, not blending: only class values, and where the neighbourhood of
        # a tile pixel (+-2 overview cells) is one class, that class.
        expected = independent_tile(labels, z, x, y)
        assert set(np.unique(low[z])) <= {0, 1, 2, 3, 255}
        uniform = _uniform_neighbourhood(labels, z, x, y, radius=2 * factor)
        assert uniform.sum() > 50
        assert np.array_equal(low[z][uniform], expected[uniform])
    zoom_high = 18
    xh, yh = tile_of_centre(zoom_high)
    assert (tiler.render(zoom_high, xh, yh) != 255).any()
    for chunk_row in (store / "labels").iterdir():
        if chunk_row.is_dir():
            shutil.rmtree(chunk_row)
    for z in (12, 13):
        assert np.array_equal(tiler.render(z, *tile_of_centre(z)), low[z])
    assert (tiler.render(zoom_high, xh, yh) == 255).all()


def _uniform_neighbourhood(labels, z, x, y, radius):
    """Tile pixels whose store pixel has one label within +-radius store pixels."""
    rows, cols = store_pixels_of_tile(z, x, y)
    out = np.zeros((256, 256), bool)
    for i, j in zip(*np.nonzero((rows >= 0) & (rows < H) & (cols >= 0) & (cols < W)), strict=True):
        r, c = rows[i, j], cols[i, j]
        window = labels[max(0, r - radius) : r + radius + 1, max(0, c - radius) : c + radius + 1]
        out[i, j] = (
            r - radius >= 0 and c - radius >= 0 and r + radius < H and c + radius < W
        ) and (window == window[0, 0]).all()
    return out


@pytest.mark.parametrize("kind", ["geotiff", "zarr"])
def test_imagery_tiles_show_the_scene_over_the_store_footprint(planted, tmp_path, kind):
    """The scene (one flat colour, no overviews) at a full-resolution zoom and at a low one
    (its decimated copy): opaque exactly where the store's label tile is inside the scene
    (2 px margin for the bilinear edge), with the scene's colour, transparent far outside."""
    import rioxarray

    from reattn_batch.scene import open_scene
    from reattn_batch.store import open_store
    from reattn_batch.viewer.label_tiles import LabelTiler
    from reattn_batch.viewer.scene_tiles import SceneTiler

    uri = str(planted.parent / "scene.tif")
    if kind == "zarr":
        da = rioxarray.open_rasterio(uri).rename("image")
        uri = str(tmp_path / "scene.zarr")
        da.to_dataset().to_zarr(uri, mode="w", zarr_format=2)
    imagery = SceneTiler(open_scene(uri))
    labels = LabelTiler(open_store(planted))
    for z in (13, 17):
        x, y = tile_of_centre(z)
        rgba = np.asarray(Image.open(BytesIO(imagery.tile(z, x, y))))
        inside = labels.render(z, x, y) != 255
        inside |= _planted_nodata(z, x, y)
        opaque = rgba[..., 3] == 255
        core = _eroded(inside, 2)
        assert core.sum() > 100 and opaque[core].all(), (kind, z)
        assert not (opaque & ~_dilated(inside, 2)).any(), (kind, z)
        assert (rgba[core][:, :3] == IMAGERY).all(), (kind, z)


def _planted_nodata(z, x, y):
    """Tile pixels over the planted nodata hole (inside the scene, 255 in the store)."""
    holes = np.zeros((H, W), np.uint8)
    holes[REGIONS[255]] = 1
    return independent_tile(holes, z, x, y) == 1


def _eroded(mask, n):
    out = mask.copy()
    for _ in range(n):
        out[1:] &= mask[:-1]
        out[:-1] &= mask[1:]
        out[:, 1:] &= mask[:, :-1]
        out[:, :-1] &= mask[:, 1:]
        mask = out.copy()
    return out


def _dilated(mask, n):
    return ~_eroded(~mask, n)


# ----------------------------------------------------------------------------- the server


def start_server(store: Path, *args: str) -> tuple[subprocess.Popen, str]:
    """`reattn-batch view STORE --port 0` as a subprocess; (process, the URL it printed).
    Its stderr goes to a temporary file (a pipe nobody reads could fill and block it)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed by stop_server)
    proc = subprocess.Popen(
        [sys.executable, "-m", "reattn_batch", "view", str(store), "--port", "0", *args],
        stdout=subprocess.PIPE, stderr=stderr, text=True, env=env, cwd=ROOT,
    )  # fmt: skip
    proc.stderr_file = stderr
    deadline = time.monotonic() + 120
    line = ""
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        match = re.search(r"(http://\S+/)", line)
        if match:
            return proc, match.group(1)
    proc.kill()
    stderr.seek(0)
    raise AssertionError(f"no URL printed: {line!r} {stderr.read()}")


def stop_server(proc: subprocess.Popen) -> tuple[int, str, str]:
    """Ctrl-C (SIGINT) the server; (exit status, rest of stdout, all of stderr)."""
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    proc.stderr_file.seek(0)
    err = proc.stderr_file.read()
    proc.stderr_file.close()
    return proc.returncode, out, err


@pytest.fixture(scope="module")
def server(planted):
    proc, url = start_server(planted)
    yield url
    if proc.poll() is None:
        stop_server(proc)


def raw_get(url: str, path: str, host: str | None = None) -> tuple[int, bytes]:
    """GET ``path`` sent exactly as written (no client-side normalisation of '..')."""
    hostname, port = re.match(r"http://([^:/]+):(\d+)/", url).groups()
    conn = http.client.HTTPConnection(hostname, int(port), timeout=30)
    conn.putrequest("GET", path, skip_host=host is not None)
    if host is not None:
        conn.putheader("Host", host)
    conn.endheaders()
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response.status, body


def test_only_allow_listed_paths_are_served(server):
    from reattn_batch.viewer.static_files import STATIC, load_static

    static = load_static()
    for name in STATIC:
        if name != "index.html":
            assert raw_get(server, f"/static/{name}") == (200, static[name])
    assert raw_get(server, "/") == (200, static["index.html"])
    for path in (
        "/static/../../etc/passwd",
        "/static/../../../../../../etc/passwd",
        "/static/%2e%2e/%2e%2e/etc/passwd",
        "/static/..%2f..%2fetc%2fpasswd",
        "/static/app.js/../../../etc/passwd",
        "/static//etc/passwd",
        "/static/THIRD_PARTY.md",  # in the package, not in the allow-list
        "/static/LICENSE-leaflet.txt",
        "/static/index.html",
        "/tiles/../../etc/passwd",
        "/tiles/labels/../../../etc/passwd",
        "/tiles/labels/1/0/0.png/../../../../etc/passwd",
        "/tiles/labels/99/0/0.png",
        "/tiles/labels/2/9/9.png",
        "//etc/passwd",
        "/etc/passwd",
        "/.zattrs",
        "/labels/0/0",
        "/api/../.zattrs",
    ):
        status, body = raw_get(server, path)
        assert status == 404, path
        assert b"root:" not in body and b"class_names" not in body, path


def test_binds_the_loopback_and_refuses_other_host_names(server, planted):
    assert server.startswith("http://127.0.0.1:")
    port = int(server.rsplit(":", 1)[1].strip("/"))
    listening = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if Path(table).exists():
            for row in Path(table).read_text().splitlines()[1:]:
                local, state = row.split()[1], row.split()[3]
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                    listening.append(local.rsplit(":", 1)[0])
    if not listening:
        pytest.skip("no /proc/net/tcp to read the listening address from")
    assert listening == ["0100007F"]  # 127.0.0.1, little-endian hex; nothing else
    assert raw_get(server, "/api/info", host="evil.example")[0] == 403
    assert raw_get(server, "/api/info", host=f"localhost:{port}")[0] == 200


def test_ctrl_c_stops_cleanly(planted):
    proc, url = start_server(planted)
    assert raw_get(url, "/api/info")[0] == 200
    code, out, err = stop_server(proc)
    assert code == 0, err
    assert "Traceback" not in err and "viewer stopped" in out


def test_bad_stores_get_one_line(tmp_path):
    from reattn_batch.store import StoreLayout as Layout

    plain = tmp_path / "plain"
    plain.mkdir()
    no_crs = tmp_path / "nocrs.zarr"
    layout = Layout(GeoBox((32, 32), Affine.identity(), None), chunk=32)
    create_store(no_crs, layout, attrs={}, class_names=CLASSES)
    for store, text in ((tmp_path / "missing.zarr", "no such label store"),
                        (plain, "not a label store"), (no_crs, "has no CRS")):  # fmt: skip
        result = subprocess.run(
            [sys.executable, "-m", "reattn_batch", "view", str(store)],
            capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)),
            timeout=120,
        )  # fmt: skip
        assert result.returncode == 2
        assert result.stderr.strip().count("\n") == 0 and text in result.stderr, result.stderr


# ----------------------------------------------------------------------------- the browser


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip(
            f"chromium not installed ({CHROMIUM}, {CHROMEDRIVER}): "
            "apt-get install chromium chromium-driver"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--window-size=1200,900", "--force-device-scale-factor=1",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    yield driver
    driver.quit()


def wait_idle(driver, timeout: float = 60) -> None:
    """Until the page is built and no tile is loading."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if driver.execute_script("return !!(window.viewer && viewer.ready && viewer.idle())"):
            time.sleep(0.3)  # one more frame for the last tiles to be painted
            if driver.execute_script("return viewer.idle()"):
                return
        time.sleep(0.1)
    raise AssertionError("tiles did not finish loading")


def screenshot(driver) -> np.ndarray:
    return np.asarray(Image.open(BytesIO(driver.get_screenshot_as_png())).convert("RGB"))


def region_points(value: int) -> list[tuple[float, float]]:
    """Store (col, row) points inside planted region ``value``, 30 px off its edges."""
    rows, cols = REGIONS[value]
    out = []
    steps = np.linspace(0, 1, 7)
    for fr in steps:
        for fc in steps:
            row = rows.start + 30 + fr * (rows.stop - rows.start - 60)
            col = cols.start + 30 + fc * (cols.stop - cols.start - 60)
            out.append((col, row))
    return out


def screen_points(driver, points: list[tuple[float, float]]) -> list[tuple[int, int]]:
    """Screenshot pixels of store points: affine -> UTM -> degrees (pyproj) -> the map;
    only those where the map is on top (not one of its controls, not off the map)."""
    to_degrees = Transformer.from_crs(32632, 4326, always_xy=True)
    lonlat = [to_degrees.transform(*(TRANSFORM @ (c, r))) for c, r in points]
    xy = driver.execute_script(
        "const m = viewer.state.map, box = m.getContainer().getBoundingClientRect();"
        "return arguments[0].map(([lon, lat]) => {"
        "  const p = m.latLngToContainerPoint([lat, lon]);"
        "  const x = Math.round(box.left + p.x), y = Math.round(box.top + p.y);"
        "  const top = document.elementFromPoint(x, y);"
        "  return [x, y, !!top && m.getContainer().contains(top)"
        "    && !top.closest('.leaflet-control-container')]; });",
        [list(p) for p in lonlat],
    )
    return [(x, y) for x, y, on_tile in xy if on_tile]


def colours_at(image: np.ndarray, pixels: list[tuple[int, int]]) -> np.ndarray:
    return np.array([image[y, x] for x, y in pixels], dtype=int)


def assert_colour(found: np.ndarray, rgb, what: str) -> None:
    if not len(found):
        return
    diff = np.abs(found - np.array(rgb)).max(axis=1)
    assert (diff <= 2).all(), f"{what}: expected {rgb}, found {found.tolist()}"


def test_page_shows_the_planted_classes_and_toggles_them(server, browser, planted):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get(server)
    wait_idle(browser)
    errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert errors == []
    assert browser.find_element(By.ID, "random-warning").is_displayed()

    browser.find_element(By.ID, "opacity").send_keys(Keys.END)  # labels fully opaque
    assert browser.find_element(By.ID, "opacity-value").text == "100%"
    fit = browser.execute_script("return viewer.state.map.getZoom()")
    for zoom in (fit, fit + 1, fit + 2):
        browser.execute_script(
            "viewer.state.map.setView(arguments[0], arguments[1], {animate: false});",
            list(
                reversed(
                    Transformer.from_crs(32632, 4326, always_xy=True).transform(
                        *(TRANSFORM @ (W * 0.45, H * 0.45))
                    )
                )
            ),
            zoom,
        )
        wait_idle(browser)
        image = screenshot(browser)
        checked = 0
        for value in (1, 2, 3, 255):
            pixels = screen_points(browser, region_points(value))
            expected = IMAGERY if value == 255 else PALETTE[value]
            assert_colour(colours_at(image, pixels), expected, f"zoom {zoom} class {value}")
            checked += len(pixels)
        assert checked >= 12, f"zoom {zoom}: too few points on screen"

    browser.execute_script(
        "viewer.state.map.setView(arguments[0], arguments[1], {animate: false});",
        list(
            reversed(
                Transformer.from_crs(32632, 4326, always_xy=True).transform(
                    *(TRANSFORM @ (W / 2, H / 2))
                )
            )
        ),
        fit,
    )
    wait_idle(browser)
    building = browser.find_element(By.CSS_SELECTOR, '.legend-row[data-index="1"] input.toggle')
    building.click()
    wait_idle(browser)
    image = screenshot(browser)
    assert_colour(colours_at(image, screen_points(browser, region_points(1))), IMAGERY, "hidden")
    for value in (2, 3):
        found = colours_at(image, screen_points(browser, region_points(value)))
        assert_colour(found, PALETTE[value], f"class {value} with building hidden")
    building.click()
    wait_idle(browser)
    image = screenshot(browser)
    assert_colour(colours_at(image, screen_points(browser, region_points(1))), PALETTE[1], "on")

    # A click on a building pixel names the class and its confidence (254 -> 1.000).
    from selenium.webdriver.common.action_chains import ActionChains

    x, y = screen_points(browser, [region_points(1)[24]])[0]  # its centre
    map_element = browser.find_element(By.ID, "map")
    box = map_element.rect
    ActionChains(browser).move_to_element_with_offset(
        map_element, int(x - box["x"] - box["width"] / 2), int(y - box["y"] - box["height"] / 2)
    ).click().perform()
    deadline = time.monotonic() + 20
    while "building" not in browser.find_element(By.ID, "pixel").text:
        assert time.monotonic() < deadline, browser.find_element(By.ID, "pixel").text
        time.sleep(0.1)
    assert "confidence 1.000" in browser.find_element(By.ID, "pixel").text
    errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert errors == []


def test_legend_areas_are_infos(server, browser, planted):
    from selenium.webdriver.common.by import By

    result = subprocess.run(
        [sys.executable, "-m", "reattn_batch", "info", str(planted), "--json"],
        capture_output=True, text=True, check=True, env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )  # fmt: skip
    info = json.loads(result.stdout)
    browser.get(server)
    wait_idle(browser)
    rows = browser.find_elements(By.CSS_SELECTOR, ".legend-row")
    assert len(rows) == len(info["classes"]) == len(CLASSES)
    for row, c in zip(rows, info["classes"], strict=True):
        assert row.get_attribute("data-name") == c["name"]
        assert float(row.get_attribute("data-hectares")) == c["hectares"]
        assert float(row.get_attribute("data-percent")) == c["percent"]
        assert row.find_element(By.CSS_SELECTOR, ".hectares").text == f"{c['hectares']:,.2f}"
        assert row.find_element(By.CSS_SELECTOR, ".percent").text == f"{c['percent']:,.1f}"
        swatch = row.find_element(By.CSS_SELECTOR, ".swatch").value_of_css_property(
            "background-color"
        )
        assert swatch.replace(" ", "") in (
            "rgb({},{},{})".format(*c["colour"]),
            "rgba({},{},{},1)".format(*c["colour"]),
        )
    # and they are the planted areas: 1 m pixels, 200 x 300 each
    assert [c["hectares"] for c in info["classes"][1:]] == [6.0, 6.0, 6.0]


# ----------------------------------------------------------------------------- a real raster


@pytest.fixture(scope="module")
def koeln_store(tmp_path_factory):
    """A store over the real Koeln tile (0.5 m, EPSG:25832) whose labels are its brightness
    in 4 bands: fine-grained, edges everywhere. The tile itself is the scene."""

    scene = shared_file("rasters/oem_koeln_50.tif")
    with rasterio.open(scene) as ds:
        grey = ds.read().astype(np.float32).mean(axis=0)
        transform, crs_wkt = ds.transform, ds.crs.to_wkt()
    labels = np.digitize(grey, [80, 120, 160]).astype(np.uint8)
    store = tmp_path_factory.mktemp("koeln") / "koeln.labels.zarr"
    attrs = {"scene": str(scene), "bands": [1, 2, 3], "stretch": None, "random_weights": False}
    layout = StoreLayout(GeoBox(labels.shape, transform, crs_wkt), chunk=512)
    create_store(store, layout, attrs=attrs, class_names=CLASSES, background_index=0)
    write_block(store, 0, 0, labels)
    return store, labels, transform, crs_wkt


def test_page_shows_the_real_store_labels_pixel_for_pixel(koeln_store, browser):
    """Every 3rd screen pixel of the map, at three zooms, against the store pixel under its
    centre (Leaflet's container point -> degrees; pyproj and the affine -> store pixel)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    store, labels, transform, crs_wkt = koeln_store
    proc, url = start_server(store)
    try:
        browser.get(url)
        wait_idle(browser)
        assert not browser.find_element(By.ID, "random-warning").is_displayed()
        browser.find_element(By.ID, "opacity").send_keys(Keys.END)
        to_store = Transformer.from_crs(4326, crs_wkt, always_xy=True)
        lut = np.array(PALETTE, int)
        fit = browser.execute_script("return viewer.state.map.getZoom()")
        for zoom in (fit, fit + 1, fit + 3):
            browser.execute_script(
                "const m = viewer.state.map; m.setView(m.getCenter(), arguments[0],"
                " {animate: false});",
                zoom,
            )
            wait_idle(browser)
            image = screenshot(browser)
            samples = browser.execute_script(
                "const m = viewer.state.map, box = m.getContainer().getBoundingClientRect();"
                "const size = m.getSize(), out = [];"
                "for (let y = 1; y < size.y; y += 3) for (let x = 1; x < size.x; x += 3) {"
                "  const top = document.elementFromPoint(box.left + x, box.top + y);"
                "  if (!top || top.closest('.leaflet-control-container')) continue;"
                "  const ll = m.containerPointToLatLng([x + 0.5, y + 0.5]);"
                "  out.push([Math.round(box.left + x), Math.round(box.top + y), ll.lng, ll.lat]);"
                "} return out;"
            )
            samples = np.array(samples)
            sx, sy = to_store.transform(samples[:, 2], samples[:, 3])
            cols, rows = ~transform @ (sx, sy)
            cols, rows = np.floor(cols).astype(int), np.floor(rows).astype(int)
            inside = (rows >= 0) & (rows < labels.shape[0]) & (cols >= 0) & (cols < labels.shape[1])
            assert inside.sum() > 10000, zoom
            px = samples[inside, :2].astype(int)
            shown = image[px[:, 1], px[:, 0]].astype(int)
            expected = lut[labels[rows[inside], cols[inside]]]
            match = (np.abs(shown - expected).max(axis=1) <= 2).mean()
            # Only a screen pixel whose centre falls within float rounding of a store pixel
            # edge may differ.
            assert match > 0.995, f"zoom {zoom}: {match:.4f} of {inside.sum()} pixels match"
        errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
        assert errors == []
    finally:
        stop_server(proc)
