"""`export --stac`: the STAC Item of a label store (SPEC 3.3, issue 12), read back by pystac.

pystac validates the Item against the STAC 1.1 core schema it ships (offline, needs
jsonschema); the extension schemas are only online, so their fields are checked here
explicitly against the store.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
from affine import Affine
from odc.geo.geobox import GeoBox
from pyproj import Transformer
from rasterio.crs import CRS

from reattn_batch.cli import main
from reattn_batch.outputs import stac
from reattn_batch.store import StoreLayout, class_palette, create_store, update_attrs, write_block

CLASSES = ["background", "building", "parking lot", "water"]
H, W = 600, 700
TRANSFORM = Affine(0.5, 0, 356000, 0, -0.5, 5645000)
ATTRS = {
    "software_version": "0.1.0",
    "run_fingerprint": "0123456789abcdef",
    "classes": {"names": CLASSES, "background_index": 0},
    "method": "reattnclip",
    "upsampler": "bilinear",
    "hyperparameters": {"alpha": 0.2, "crop": 224, "stride": 112},
    "weights": {"clip": {"source": "random", "name": "ViT-T-16-test", "random": True}},
    "random_weights": True,
    "block_size": 512,
}


def make_store(path: Path, crs_wkt: str | None = CRS.from_epsg(25832).to_wkt(), **extra):
    layout = StoreLayout(GeoBox((H, W), TRANSFORM, crs_wkt), chunk=512)
    create_store(path, layout, attrs={**ATTRS, **extra}, class_names=CLASSES, background_index=0)
    labels = np.zeros((H, W), np.uint8)
    labels[100:300, 100:600] = 2
    write_block(path, 0, 0, labels[:512, :512].copy())
    write_block(path, 0, 512, labels[:512, 512:].copy())
    write_block(path, 512, 0, labels[512:, :512].copy())
    write_block(path, 512, 512, labels[512:, 512:].copy())
    return path


def cli_exit(args) -> int:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    return exc.value.code


@pytest.fixture(scope="module")
def item_file(tmp_path_factory):
    """Item of a store exported (COG, polygons, quicklook, STAC) in one command."""
    root = tmp_path_factory.mktemp("stac")
    store = make_store(root / "scene.labels.zarr", scene_datetime="2021-06-01T10:30:00Z")
    update_attrs(store, source_stac_item="https://example.org/items/scene.json")
    out = root / "out"
    out.mkdir()
    main(["export", str(store), "--cog", str(out / "labels.tif"), "--quicklook",
          str(out / "quick.png"), "--vector", str(out / "polygons.fgb"), "--workers", "1",
          "--stac", str(root / "catalog")])  # fmt: skip
    return root / "catalog" / "scene.labels.json", store


def test_pystac_reads_and_validates_the_item(item_file):
    pytest.importorskip("jsonschema")
    from pystac.validation import validate_dict

    path, _ = item_file
    item = pystac.Item.from_file(str(path))
    assert item.id == "scene.labels"
    # Core STAC 1.1 schema, offline; extension schemas would need the network.
    assert validate_dict(item.to_dict(), extensions=[])
    assert set(item.stac_extensions) == {
        "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
        "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
        "https://stac-extensions.github.io/classification/v2.0.0/schema.json",
    }


def test_classes_match_the_store(item_file):
    path, _ = item_file
    item = pystac.Item.from_file(str(path))
    palette = class_palette(len(CLASSES), 0)
    expected = [
        {
            "value": c,
            "name": name.replace(" ", "_"),
            "title": name,
            "color_hint": "{:02X}{:02X}{:02X}".format(*palette[c]),
        }
        for c, name in enumerate(CLASSES)
    ]
    for where in (item.properties, item.assets["labels"].extra_fields):
        classes = where["classification:classes"]
        got = [{k: c[k] for k in ("value", "name", "title", "color_hint")} for c in classes[:-1]]
        assert got == expected
        assert classes[-1]["value"] == 255 and classes[-1]["nodata"] is True
        for c in classes:  # the extension's patterns
            assert all(ch.isalnum() or ch in "-_" for ch in c["name"])


def test_projection_footprint_and_datetime(item_file):
    path, _ = item_file
    item = pystac.Item.from_file(str(path))
    p = item.properties
    assert p["proj:code"] == "EPSG:25832"
    assert p["proj:shape"] == [H, W]
    assert p["proj:transform"] == [0.5, 0, 356000, 0, -0.5, 5645000]
    assert p["proj:bbox"] == [356000, 5645000 - 0.5 * H, 356000 + 0.5 * W, 5645000]
    to_lonlat = Transformer.from_crs(25832, 4326, always_xy=True)
    lon0, lat0, lon1, lat1 = item.bbox
    for x, y in [(356000, 5645000), (356350, 5644700), (356175, 5644850)]:
        lon, lat = to_lonlat.transform(x, y)
        assert lon0 - 1e-9 <= lon <= lon1 + 1e-9 and lat0 - 1e-9 <= lat <= lat1 + 1e-9
    assert item.geometry["type"] == "Polygon"
    assert item.datetime == dt.datetime(2021, 6, 1, 10, 30, tzinfo=dt.UTC)
    assert p["reattn:datetime_source"] == "scene"


def test_run_identity_assets_and_source_link(item_file):
    path, store = item_file
    item = pystac.Item.from_file(str(path))
    p = item.properties
    assert p["reattn:method"] == "reattnclip" and p["reattn:upsampler"] == "bilinear"
    assert p["reattn:hyperparameters"] == ATTRS["hyperparameters"]
    assert p["reattn:weights"] == ATTRS["weights"] and p["reattn:random_weights"] is True
    assert p["reattn:run_fingerprint"] == "0123456789abcdef"
    roles = {k: a.roles for k, a in item.assets.items()}
    assert roles == {
        "labels": ["data"],
        "cog": ["data"],
        "polygons": ["data"],
        "quicklook": ["overview"],
    }
    assert item.assets["cog"].media_type == pystac.MediaType.COG
    assert item.assets["polygons"].media_type == "application/vnd.flatgeobuf"
    for asset in item.assets.values():
        assert not Path(asset.href).is_absolute()  # portable with its files
        assert Path(asset.get_absolute_href()).exists()
    assert Path(item.assets["labels"].get_absolute_href()) == store.absolute()
    with rasterio.open(item.assets["cog"].get_absolute_href()) as ds:
        assert ds.nodata == item.assets["cog"].extra_fields["raster:bands"][0]["nodata"] == 255
    links = [link.href for link in item.links if link.rel == "derived_from"]
    assert links == ["https://example.org/items/scene.json"]


def test_datetime_from_the_scene_file_else_when_the_store_was_written(tmp_path):
    scene = tmp_path / "scene.tif"
    profile = {"driver": "GTiff", "width": 8, "height": 8, "count": 1, "dtype": "uint8"}
    with rasterio.open(scene, "w", **profile) as ds:
        ds.write(np.zeros((1, 8, 8), np.uint8))
        ds.update_tags(TIFFTAG_DATETIME="2019:08:07 06:05:04")
    store = make_store(tmp_path / "a.labels.zarr", scene=str(scene))
    item = stac.build_item(store)
    assert item.datetime == dt.datetime(2019, 8, 7, 6, 5, 4, tzinfo=dt.UTC)
    assert item.properties["reattn:datetime_source"] == "scene_file"
    bare = stac.build_item(make_store(tmp_path / "b.labels.zarr"))
    assert bare.properties["reattn:datetime_source"] == "store_written"
    assert abs(bare.datetime - dt.datetime.now(dt.UTC)) < dt.timedelta(hours=1)
    assert not [link for link in bare.links if link.rel == "derived_from"]


def test_refusals_are_one_line(tmp_path, capsys, item_file):
    bare = make_store(tmp_path / "nocrs.labels.zarr", crs_wkt=None)
    assert cli_exit(["export", bare, "--stac", tmp_path / "cat"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no CRS" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "cat").exists()
    path, store = item_file
    before = path.read_text()
    assert cli_exit(["export", store, "--stac", path.parent]) == 2
    assert "--overwrite" in capsys.readouterr().err and path.read_text() == before
