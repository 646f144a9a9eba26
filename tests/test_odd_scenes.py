"""Issue 19 item 8: odd but valid scenes either work, with their georeferencing kept
exactly, or are refused with one line that says why and what to do.

- a geographic CRS (EPSG:4326, 1e-5 degree pixels): mapped at its own GSD or a `--gsd` in
  degrees; the store, its COG and rioxarray keep the scene's transform bit for bit;
- a rotated or sheared geotransform: refused before any cluster starts, naming gdalwarp;
- paths with spaces and non-ASCII characters (scene, classes file, store, exports);
- signed integer data (int16, int8) with negative values and a negative nodata;
- class names in Chinese, Cyrillic and Arabic script, and an emoji.

Scenes are synthetic GeoTIFFs written with rasterio; each is mapped once (module-scoped
fixtures) with the tiny model, and its store shared by the checks.
"""

from __future__ import annotations

import json
import logging
import re
import time
import urllib.parse
import urllib.request
from pathlib import Path

import cli_helpers as h
import numpy as np
import pytest
import rasterio
from affine import Affine

from reattn_batch.cli import main

pytestmark = pytest.mark.timeout(900)

GEO = Affine(1e-5, 0, 6.95, 0, -1e-5, 50.93)  # EPSG:4326, about 0.7 m x 1.1 m near Cologne


def cli_main(args, capsys=None) -> tuple[int, str, str]:
    """The console entry point in this process: (exit status, stdout, stderr)."""
    try:
        main([str(a) for a in args])
        status = 0
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr() if capsys is not None else ("", "")
    return status, out, err


# ----------------------------------------------------------------------------- geographic


@pytest.fixture(scope="module")
def geographic(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("geographic")
    scene = h.write_scene(folder / "geo.tif", 300, 260, crs="EPSG:4326", transform=GEO)
    store = folder / "geo.labels.zarr"
    h.ok(h.cli("run", scene, *h.CLASSES, *h.TINY, "--out", store))
    return scene, store


def assert_georeferencing_kept(store: Path, scene: Path) -> None:
    """The store's georeferencing is the scene's: its own attributes and the CF grid
    mapping (rioxarray) bit for bit; GDAL, which derives a Zarr's geotransform from the
    x/y pixel-centre coordinates, the same CRS and origin and a pixel size within 1e-11."""
    import rioxarray  # noqa: F401
    import xarray as xr

    with rasterio.open(scene) as src:
        transform, crs, shape = src.transform, src.crs, src.shape
    attrs = h.attrs(store)
    assert attrs["spatial:transform"] == list(transform)[:6]
    assert attrs["spatial:shape"] == list(shape)
    labels = xr.open_zarr(store, mask_and_scale=False)["labels"]
    assert labels.rio.transform() == transform
    assert labels.rio.crs == crs
    with rasterio.open(f'ZARR:"{store}":/labels') as gdal:
        assert gdal.crs == crs and gdal.shape == shape
        got = gdal.transform
        assert (got.b, got.d, got.c, got.f) == (transform.b, transform.d, transform.c, transform.f)
        assert got.a == pytest.approx(transform.a, rel=1e-11, abs=0)
        assert got.e == pytest.approx(transform.e, rel=1e-11, abs=0)


def test_a_geographic_scene_maps_at_its_own_gsd_in_degrees(geographic, tmp_path, capsys):
    scene, store = geographic
    attrs = h.attrs(store)
    assert attrs["complete"] is True
    assert attrs["native_gsd"] == attrs["model_gsd"] == pytest.approx(1e-5, rel=1e-12)
    assert_georeferencing_kept(store, scene)
    cog = tmp_path / "geo.tif"
    assert cli_main(["export", store, "--cog", cog], capsys)[0] == 0
    with rasterio.open(cog) as out, rasterio.open(scene) as src:
        assert out.transform == src.transform and out.crs == src.crs
    status, out, _ = cli_main(["info", "--json", store], capsys)
    info = json.loads(out)
    assert status == 0 and info["crs"]["epsg"] == "EPSG:4326"
    assert info["area_available"] is False and "degrees" in info["area_note"]


def test_gsd_on_a_geographic_scene_is_in_degrees(geographic, tmp_path, capsys):
    scene, _ = geographic
    store = tmp_path / "coarser.labels.zarr"
    h.ok(h.cli("run", scene, *h.CLASSES, *h.TINY, "--gsd", "2e-5", "--out", store))
    attrs = h.attrs(store)
    assert attrs["model_gsd"] == 2e-5 and attrs["model_grid_shape"] == [130, 150]
    assert_georeferencing_kept(store, scene)  # the native grid, whatever the model's
    # metres given for degrees: one line naming the scene's unit and the range that works
    status, _, err = cli_main(["run", scene, *h.CLASSES, *h.TINY, "--gsd", "0.5",
                               "--out", tmp_path / "m.zarr"], capsys)  # fmt: skip
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1, err
    assert "(degree)" in lines[0] and "--gsd between" in lines[0], lines[0]
    assert not (tmp_path / "m.zarr").exists()


# ----------------------------------------------------------------------------- rotated


@pytest.mark.parametrize(
    "transform",
    [
        pytest.param(
            Affine.translation(356000, 5645000) * Affine.rotation(15) * Affine.scale(0.5, -0.5),
            id="rotated",
        ),
        pytest.param(Affine(0.5, 0.1, 356000, 0, -0.5, 5645000), id="sheared"),
    ],
)
def test_a_rotated_or_sheared_scene_is_refused_before_any_cluster(
    transform, tmp_path, capsys, caplog
):
    scene = h.write_scene(tmp_path / "tilted.tif", 300, 260, transform=transform)
    with caplog.at_level(logging.INFO):
        status, _, err = cli_main(
            ["run", scene, *h.CLASSES, *h.TINY, "--out", tmp_path / "t.zarr"], capsys
        )
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and lines[0].startswith(h.ERROR_PREFIX), err
    assert "rotated or sheared" in lines[0] and "gdalwarp -t_srs" in lines[0], lines[0]
    assert "tilted.tif" in lines[0]
    assert not any("dashboard" in r.getMessage() for r in caplog.records), "a cluster started"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tilted.tif"]


# ----------------------------------------------------------------------------- odd paths

#: Classes in four scripts and an emoji (a class a line, synonyms after a comma).
NAMES = ["建筑", "дорога", "ماء", "🌳 tree"]


@pytest.fixture(scope="module")
def odd(tmp_path_factory) -> dict[str, Path]:
    """A scene, its classes file and its store at paths with spaces, accents, CJK and
    Cyrillic letters; the classes in non-Latin scripts."""
    folder = tmp_path_factory.mktemp("odd") / "dir with space" / "données ü 建筑"
    folder.mkdir(parents=True)
    scene = h.write_scene(folder / "scène 1 ü.tif", 300, 260)
    classes = folder / "клас сы.txt"
    classes.write_text("建筑\nдорога,улица\nماء\n🌳 tree\n", encoding="utf-8")
    out = folder / "out dir ラベル"
    out.mkdir()
    store = out / "ラベル store.zarr"
    h.ok(h.cli("run", scene, "--classes-file", classes, *h.TINY, "--out", store))
    return {"scene": scene, "store": store, "out": out}


def test_paths_with_spaces_and_non_ascii_letters_work_for_every_command(odd, capsys):
    import pyogrio

    store, out = odd["store"], odd["out"]
    attrs = h.attrs(store)
    assert attrs["complete"] is True and attrs["scene"] == str(odd["scene"])
    assert_georeferencing_kept(store, odd["scene"])
    files = {
        "cog": out / "ü cog.tif",
        "quicklook": out / "ü quick look.png",
        "polygons": out / "ü polygons.gpkg",
    }
    stac = out / "stac ü"
    status, _, err = cli_main(
        ["export", store, "--cog", files["cog"], "--quicklook", files["quicklook"],
         "--vector", files["polygons"], "--workers", "1", "--stac", stac], capsys,
    )  # fmt: skip
    assert status == 0, err
    with rasterio.open(files["cog"]) as cog:
        np.testing.assert_array_equal(cog.read(1), h.labels(store))
    assert len(pyogrio.read_dataframe(files["polygons"])) > 0
    item = json.loads((stac / "ラベル store.json").read_text(encoding="utf-8"))
    for key, path in files.items():  # each asset's href leads to its file
        href = item["assets"][key]["href"]
        assert (stac / urllib.request.url2pathname(href)).resolve() == path.resolve(), href
    status, text, err = cli_main(["info", "--json", store], capsys)
    info = json.loads(text)
    assert status == 0 and (info["store"], info["scene"]) == (str(store), str(odd["scene"])), err


def test_non_latin_class_names_are_kept_by_the_store_and_every_export(odd, tmp_path, capsys):
    import geopandas
    import pyogrio

    store = odd["store"]
    attrs = h.attrs(store)
    assert attrs["class_names"] == ["background", *NAMES]
    assert attrs["classes"]["synonyms"][2] == ["дорога", "улица"]
    status, out, _ = cli_main(["info", "--json", store], capsys)
    assert status == 0 and [c["name"] for c in json.loads(out)["classes"]] == attrs["class_names"]
    status, out, _ = cli_main(["info", store], capsys)
    assert status == 0 and all(name in out for name in NAMES), out
    for ext in ("gpkg", "fgb", "parquet"):
        path = tmp_path / f"polygons.{ext}"
        assert cli_main(["export", store, "--vector", path, "--workers", "1",
                         "--classes", ",".join(NAMES)], capsys)[0] == 0  # fmt: skip
        table = geopandas.read_parquet(path) if ext == "parquet" else pyogrio.read_dataframe(path)
        assert len(table) and set(table["class_name"]) <= set(NAMES)
        for index, name in zip(table["class_index"], table["class_name"], strict=True):
            assert attrs["class_names"][index] == name
    quicklook, stac = tmp_path / "quicklook.png", tmp_path / "stac"
    status, _, err = cli_main(["export", store, "--quicklook", quicklook, "--stac", stac], capsys)
    assert status == 0 and quicklook.stat().st_size > 0, err  # glyphs the font lacks: no crash
    item = json.loads((stac / "ラベル store.json").read_text(encoding="utf-8"))
    classes = [c for c in item["properties"]["classification:classes"] if not c.get("nodata")]
    assert [c["title"] for c in classes] == attrs["class_names"]
    short = [c["name"] for c in classes]  # the extension's machine names: unique, [A-Za-z0-9_-]
    assert len(set(short)) == len(short) and all(re.fullmatch(r"[\w-]+", n, re.A) for n in short)


def test_view_serves_a_store_and_scene_at_odd_paths_with_non_latin_classes(odd):
    proc = h.start("view", odd["store"], "--port", "0")
    try:
        deadline, url = time.monotonic() + 120, None
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            match = re.search(r"(http://\S+)", line)
            url = match.group(1) if match else None
        assert url, proc.stderr.read()[-3000:] if proc.poll() is not None else "no URL"
        api = urllib.parse.urlsplit(url)._replace(path="/api/info").geturl()
        with urllib.request.urlopen(api, timeout=60) as response:
            info = json.loads(response.read().decode("utf-8"))
    finally:
        result = h.finish(proc, timeout=30)
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert [c["name"] for c in info["classes"]] == ["background", *NAMES]
    assert info["imagery"] is True and info["scene"] == str(odd["scene"])


# ----------------------------------------------------------------------------- signed integers


@pytest.fixture(
    scope="module",
    params=[("int16", -9999, -2000, 3000), ("int8", -128, -100, 100)],
    ids=["int16", "int8"],
)
def signed(request, tmp_path_factory):
    dtype, nodata, lo, hi = request.param
    folder = tmp_path_factory.mktemp(dtype)
    data = (lo + h.texture(260, 300) * (hi - lo)).astype(dtype)
    data[:, :40, :] = nodata  # a nodata band along the top
    scene = h.write_scene(folder / f"{dtype}.tif", 300, 260, data=data, nodata=nodata)
    store = folder / f"{dtype}.labels.zarr"
    h.ok(h.cli("run", scene, *h.CLASSES, *h.TINY, "--out", store))
    return data, nodata, store


def test_signed_integer_scenes_are_stretched_once_and_keep_their_negative_nodata(signed):
    data, nodata, store = signed
    labels = h.labels(store)
    assert (labels[:40] == 255).all() and (labels[40:] != 255).all()
    valid = data[:, 40:, :].astype(np.float64).ravel()  # every band, pooled
    assert valid.min() < 0
    # one scene-wide stretch: the 2nd and 98th percentiles of the valid pixels (the scene
    # is smaller than the stretch sample, so the sample is the whole scene)
    assert h.attrs(store)["stretch"] == pytest.approx(list(np.percentile(valid, [2, 98])))
