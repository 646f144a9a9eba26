"""Outputs for people (SPEC 3.3, "Export"): the COG read back with GDAL (rasterio), the PNG
quicklook's size and colours, and `info`'s areas against hand counts, on stores with known
labels built directly with the store module (no model run)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import zarr
from affine import Affine
from odc.geo.geobox import GeoBox
from PIL import Image
from rasterio.crs import CRS
from rio_cogeo.cogeo import cog_validate

from reattn_batch.cli import main
from reattn_batch.outputs import decimate, quicklook
from reattn_batch.outputs.cog import export_cog
from reattn_batch.outputs.counts import class_counts
from reattn_batch.outputs.info import store_info
from reattn_batch.store import (
    StoreLayout,
    class_palette,
    create_store,
    mark_block_done,
    open_store,
    write_block,
)
from reattn_batch.workers.errors import UserError

CLASSES = ["background", "building", "road", "water"]
H, W = 1100, 1300  # rows, cols
BLOCK = 1024  # block grid 2 x 2; blocks (0, 0) and (0, 1) written, row 1 left unwritten
TRANSFORM = Affine(0.5, 0, 356000, 0, -0.5, 5645000)  # 0.5 m pixels: 0.25 m^2 each

# Known labels: background, with classes in rectangles (rows, cols) and a nodata patch.
RECTS = {
    1: (slice(0, 512), slice(0, 512)),  # exactly one COG tile
    2: (slice(600, 900), slice(100, 700)),
    3: (slice(100, 400), slice(1100, 1300)),
    255: (slice(950, 1024), slice(0, 300)),
}
# Hand counts of the above.
UNWRITTEN = (H - BLOCK) * W  # 76 rows x 1300
NODATA_PX = UNWRITTEN + 74 * 300
COUNTS = {1: 512 * 512, 2: 300 * 600, 3: 300 * 200}
VALID = H * W - NODATA_PX
COUNTS[0] = VALID - COUNTS[1] - COUNTS[2] - COUNTS[3]
PALETTE = class_palette(len(CLASSES), 0)


def expected_labels() -> np.ndarray:
    out = np.full((H, W), 255, np.uint8)
    out[:BLOCK] = 0
    for value, (rows, cols) in RECTS.items():
        out[rows, cols] = value
    return out


def attrs(random_weights: bool = True) -> dict:
    return {
        "software": "reattn-batch",
        "software_version": "0.1.0",
        "run_fingerprint": "0123456789abcdef",
        "classes": {
            "names": CLASSES,
            "synonyms": [["background"], ["building", "roof"], ["road"], ["water"]],
            "background_index": 0,
        },
        "method": "reattnclip",
        "hyperparameters": {"alpha": 0.2, "prob_thd": 0.0, "crop": 224, "stride": 112},
        "upsampler": "bilinear",
        "weights": {"clip": {"source": "random", "name": "ViT-T-16-test", "random": True}},
        "random_weights": random_weights,
        "block_size": BLOCK,
    }


@pytest.fixture(scope="module")
def labelled_store(tmp_path_factory):
    """A 1100 x 1300 EPSG:25832 store with two of its four blocks written and recorded."""
    path = tmp_path_factory.mktemp("store") / "scene.labels.zarr"
    layout = StoreLayout(GeoBox((H, W), TRANSFORM, CRS.from_epsg(25832).to_wkt()), chunk=512)
    create_store(
        path, layout, attrs=attrs(), class_names=CLASSES, background_index=0, blocks=(2, 2)
    )
    labels = expected_labels()
    for index, (r0, c0) in enumerate([(0, 0), (0, BLOCK)]):
        block = labels[r0 : r0 + BLOCK, c0 : c0 + BLOCK]
        write_block(path, r0, c0, np.ascontiguousarray(block))
        mark_block_done(path, index)
    return path


def small_store(path, crs_wkt, transform=Affine(2.0, 0, 1000, 0, -2.0, 5000)):
    """A 200 x 300 store: class 1 in the left half, class 0 in the right."""
    create_store(
        path,
        StoreLayout(GeoBox((200, 300), transform, crs_wkt)),
        attrs=attrs(False),
        class_names=CLASSES,
    )
    labels = np.zeros((200, 300), np.uint8)
    labels[:, :150] = 1
    write_block(path, 0, 0, labels)
    return path


def cli_exit(args) -> int:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    return exc.value.code


# ----------------------------------------------------------------------------- COG


@pytest.fixture(scope="module")
def cog(labelled_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("cog") / "labels.tif"
    main(["export", str(labelled_store), "--cog", str(out)])
    return out


def test_cog_has_the_store_georeferencing_values_and_nodata(cog):
    with rasterio.open(cog) as ds:
        assert ds.driver == "GTiff" and (ds.height, ds.width, ds.count) == (H, W, 1)
        assert ds.crs == CRS.from_epsg(25832)
        assert ds.transform == TRANSFORM
        assert ds.nodata == 255 and ds.dtypes == ("uint8",)
        assert np.array_equal(ds.read(1), expected_labels())
        assert json.loads(ds.tags()["CLASS_NAMES"]) == CLASSES
        assert ds.tags()["RUN_FINGERPRINT"] == "0123456789abcdef"
        assert ds.tags()["RANDOM_WEIGHTS"] == "true"


def test_cog_palette_is_the_store_colour_map(cog, labelled_store):
    store_cmap = zarr.open_array(str(labelled_store / "labels"), mode="r").attrs["colormap"]
    with rasterio.open(cog) as ds:
        assert ds.colorinterp[0] == rasterio.enums.ColorInterp.palette
        cmap = ds.colormap(1)
    for c, rgb in enumerate(PALETTE):
        assert cmap[c] == (*rgb, 255)
        assert list(cmap[c]) == store_cmap[str(c)]
    assert cmap[255] == (0, 0, 0, 0)


def test_cog_is_tiled_compressed_with_mode_overviews_in_cog_layout(cog):
    with rasterio.open(cog) as ds:
        assert ds.block_shapes == [(512, 512)]
        assert ds.profile["tiled"] and ds.compression == rasterio.enums.Compression.deflate
        assert ds.overviews(1) == [2, 4]
        assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert ds.tags()["OVERVIEW_RESAMPLING"] == "MODE"
    assert cog_validate(str(cog), quiet=True)[:2] == (True, [])
    with rasterio.open(cog, overview_level=0) as ov:
        assert (ov.height, ov.width) == (550, 650)
        half = ov.read(1)
    assert (half[:256, :256] == 1).all()  # a uniform tile stays its class
    assert (half[305:445, 55:345] == 2).all()
    assert (half[55:195, 555:645] == 3).all()
    assert (half[515:, :] == 255).all()  # unwritten stays nodata
    assert (half[300:, 400:600] == 0).sum() > 0 and set(np.unique(half)) == {0, 1, 2, 3, 255}


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_cog_options_and_a_store_without_crs(tmp_path):
    store_path = small_store(tmp_path / "nocrs.zarr", None, Affine.identity())
    out = tmp_path / "nocrs.tif"
    export_cog(store_path, out, resampling="nearest", compress="zstd")
    with rasterio.open(out) as ds:
        assert ds.crs is None
        assert ds.compression == rasterio.enums.Compression.zstd
        assert ds.overviews(1) == []  # fits in one tile
        assert ds.tags()["OVERVIEW_RESAMPLING"] == "NEAREST"
        assert (ds.read(1)[:, :150] == 1).all() and (ds.read(1)[:, 150:] == 0).all()
    assert cog_validate(str(out), quiet=True)[:2] == (True, [])


# ----------------------------------------------------------------------------- quicklook


def test_quicklook_size_map_colours_and_legend(labelled_store, tmp_path):
    out = tmp_path / "quick.png"
    size = quicklook.export_quicklook(labelled_store, out, max_size=400)
    map_h, map_w = quicklook.quicklook_shape(H, W, 400)
    assert (map_h, map_w) == (338, 400)
    image = np.asarray(Image.open(out).convert("RGB"))
    assert size == (image.shape[1], image.shape[0])
    assert image.shape[1] > map_w and image.shape[0] >= map_h  # the legend is to the right

    def at(row, col):  # the map pixel over source pixel (row, col)
        return tuple(image[row * map_h // H, col * map_w // W])

    assert at(250, 250) == PALETTE[1]
    assert at(750, 400) == PALETTE[2]
    assert at(250, 1200) == PALETTE[3]
    assert at(200, 800) == PALETTE[0]
    assert at(1070, 650) == quicklook.NODATA_QUICKLOOK  # unwritten
    assert at(990, 150) == quicklook.NODATA_QUICKLOOK  # nodata inside a written block
    counts = class_counts(open_store(labelled_store))
    assert [counts[c] for c in range(4)] == [COUNTS[c] for c in range(4)]  # legend shares
    assert counts[255] == NODATA_PX
    legend = image[:, map_w:].reshape(-1, 3)
    legend_colours = {tuple(c) for c in np.unique(legend, axis=0)}
    assert set(PALETTE) | {quicklook.NODATA_QUICKLOOK} <= legend_colours


def test_quicklook_cli_refuses_to_overwrite(labelled_store, tmp_path):
    out = tmp_path / "q.png"
    main(["export", str(labelled_store), "--quicklook", str(out), "--max-size", "64"])
    assert max(quicklook.quicklook_shape(H, W, 64)) == 64
    before = out.read_bytes()
    assert cli_exit(["export", labelled_store, "--quicklook", out]) == 2
    assert out.read_bytes() == before


def brute_mode(labels: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Cell by cell: source pixel i lies in cell i * out // n; nodata only if nothing valid."""
    h, w = labels.shape
    row_cells = np.arange(h) * out_h // h
    col_cells = np.arange(w) * out_w // w
    out = np.empty((out_h, out_w), np.uint8)
    for i in range(out_h):
        for j in range(out_w):
            cell = labels[np.ix_(row_cells == i, col_cells == j)].ravel()
            valid = cell[cell != 255]
            out[i, j] = 255 if valid.size == 0 else np.bincount(valid).argmax()
    return out


def test_decimate_mode_matches_a_brute_force_mode(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, (90, 130), dtype=np.uint8)
    labels[rng.random((90, 130)) < 0.3] = 255
    labels[:20, :30] = 255  # whole cells of nodata
    path = tmp_path / "rand.zarr"
    layout = StoreLayout(GeoBox((90, 130), TRANSFORM, None), chunk=16)
    create_store(path, layout, attrs=attrs(False), class_names=CLASSES)
    write_block(path, 0, 0, labels)
    ls = open_store(path)
    monkeypatch.setattr(decimate, "WINDOW", 16)  # many windows, cells across chunk edges
    for out_h, out_w in [(7, 11), (23, 34), (45, 65), (90, 130)]:
        got = decimate.decimate_mode(ls, out_h, out_w)
        assert np.array_equal(got, brute_mode(labels, out_h, out_w)), (out_h, out_w)


def test_halve_mode_is_the_mode_of_each_two_by_two_cell():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 4, (37, 51), dtype=np.uint8)  # odd sides: lone edge cells
    labels[rng.random(labels.shape) < 0.3] = 255
    labels[:6, :6] = 255  # cells of nodata only
    got = decimate.halve_mode(labels)
    assert got.shape == (19, 26)
    for i in range(19):
        for j in range(26):
            cell = labels[2 * i : 2 * i + 2, 2 * j : 2 * j + 2].ravel()
            valid = cell[cell != 255]
            want = 255 if valid.size == 0 else np.bincount(valid).argmax()  # ties: smaller
            assert got[i, j] == want, (i, j)


# ----------------------------------------------------------------------------- info


def test_info_hectares_percent_progress_and_json(labelled_store, capsys):
    info = store_info(labelled_store)
    assert info["area_available"] and info["pixel_area_m2"] == 0.25
    assert info["pixels"] == {"total": H * W, "valid": VALID, "nodata": NODATA_PX}
    for c, name in enumerate(CLASSES):
        row = info["classes"][c]
        assert row["name"] == name and row["pixels"] == COUNTS[c]
        assert row["hectares"] == pytest.approx(COUNTS[c] * 0.25 / 10_000)
        assert row["percent"] == pytest.approx(100 * COUNTS[c] / VALID)
        assert row["colour"] == list(PALETTE[c])
    assert sum(r["percent"] for r in info["classes"]) == pytest.approx(100)
    assert info["classes"][1]["synonyms"] == ["building", "roof"]
    assert info["progress"]["blocks_done"] == 2 and info["progress"]["blocks_total"] == 4
    assert info["complete"] is False and info["random_weights"] is True
    assert info["run_fingerprint"] == "0123456789abcdef" and info["method"] == "reattnclip"
    assert info["crs"]["epsg"] == "EPSG:25832" and info["unexpected_values"] == {}

    capsys.readouterr()
    main(["info", str(labelled_store), "--json"])
    assert json.loads(capsys.readouterr().out) == info

    main(["info", str(labelled_store)])
    text = capsys.readouterr().out
    # building: 262,144 px x 0.25 m^2 = 6.5536 ha, 20.0% of the 1,309,000 valid pixels
    for word in ["building", "water", "RANDOM", "0123456789abcdef", "2/4 blocks", "6.55", "20.0"]:
        assert word in text


@pytest.mark.parametrize(
    ("crs_wkt", "why"),
    [(None, "no CRS"), (CRS.from_epsg(4326).to_wkt(), "not projected")],
)
def test_info_without_metric_crs_reports_pixels_not_hectares(tmp_path, crs_wkt, why):
    transform = Affine(0.001, 0, 7.0, 0, -0.001, 51.0) if crs_wkt else Affine.identity()
    info = store_info(small_store(tmp_path / "s.zarr", crs_wkt, transform))
    assert info["area_available"] is False and why in info["area_note"]
    assert [c["pixels"] for c in info["classes"]] == [150 * 200, 150 * 200, 0, 0]
    assert all(c["hectares"] is None for c in info["classes"])
    assert info["classes"][0]["percent"] == pytest.approx(50)


def test_info_in_feet_converts_to_hectares(tmp_path):
    crs = CRS.from_epsg(2263)  # NY Long Island, US survey feet
    info = store_info(small_store(tmp_path / "ft.zarr", crs.to_wkt()))
    foot = 1200 / 3937
    assert info["pixel_area_m2"] == pytest.approx(4 * foot**2)
    assert info["classes"][1]["hectares"] == pytest.approx(30_000 * 4 * foot**2 / 10_000)


# ----------------------------------------------------------------------------- errors


def test_errors_are_one_line_and_exit_2(labelled_store, tmp_path, capsys):
    assert cli_exit(["info", tmp_path / "missing.zarr"]) == 2
    err = capsys.readouterr().err
    assert "no such label store" in err and err.count("\n") == 1

    zarr.open_group(str(tmp_path / "other.zarr"), mode="w", zarr_format=2)
    assert cli_exit(["export", tmp_path / "other.zarr", "--cog", tmp_path / "o.tif"]) == 2
    assert "not a reattn-batch label store" in capsys.readouterr().err

    assert cli_exit(["export", labelled_store]) == 2
    assert "nothing to export" in capsys.readouterr().err


def test_existing_cog_is_kept_without_overwrite_and_replaced_with_it(
    labelled_store, tmp_path, capsys
):
    out, quick = tmp_path / "old.tif", tmp_path / "new.png"
    out.write_bytes(b"precious")
    assert cli_exit(["export", labelled_store, "--cog", out, "--quicklook", quick]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--overwrite" in err and err.count("\n") == 1
    assert out.read_bytes() == b"precious"
    assert not quick.exists()  # a refusal writes nothing
    assert [p.name for p in tmp_path.iterdir()] == ["old.tif"]  # no temporary files left

    main(["export", str(labelled_store), "--cog", str(out), "--overwrite"])
    with rasterio.open(out) as ds:
        assert np.array_equal(ds.read(1), expected_labels())
    with pytest.raises(UserError, match="already exists"):
        export_cog(labelled_store, out)
