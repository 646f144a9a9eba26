"""STAC in (issue 12 items 4 and 5): a STAC Item as the SCENE of `run`, and regional jobs
whose scenes come from a STAC API search (a small API served on loopback by this test,
read by the real pystac-client) or a static STAC catalog.

Every raster is a small synthetic GeoTIFF; the model is the tiny random one.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import cli_helpers as h
import numpy as np
import pystac
import pytest
import shapely.geometry
from stac_helpers import SIZE, StacApi, make_item, save_item, write_tif

from reattn_batch import store
from reattn_batch.cli import main

TINY = ["--clip-weights", "random", "--set", "clip_model=ViT-T-16-test", "--upsampler", "bilinear"]
RUN = ["--classes", "building,water", *TINY, "--block-size", "512", "--workers", "1"]


def labels_of(path: Path) -> np.ndarray:
    return np.asarray(store.open_labels(path)[:])


@pytest.fixture(scope="module")
def item_run(tmp_path_factory):
    """`run ITEM.json` (store name by default) and `export --stac` of its store."""
    root = tmp_path_factory.mktemp("item")
    tif = write_tif(root / "raster.tif", 356000.0, 1)
    item = save_item(make_item("S2_test_scene", tif), root / "items" / "scene-item.json")
    work = root / "work"
    work.mkdir()
    import os

    here = os.getcwd()
    os.chdir(work)
    try:
        main(["run", str(item), *RUN])
    finally:
        os.chdir(here)
    out = work / "S2_test_scene.labels.zarr"
    main(["export", str(out), "--stac", str(root / "catalog")])
    return item, tif, out, root / "catalog" / "S2_test_scene.labels.json"


def test_a_stac_item_is_read_through_its_visual_asset_and_linked_back(item_run, tmp_path):
    item, tif, out, exported = item_run
    attrs = store.read_attrs(out)
    assert attrs["source_stac_item"] == str(item.absolute())
    assert attrs["scene"] == str(tif.absolute())  # the asset was read
    assert attrs["scene_datetime"].startswith("2024-06-01T00:00:00")
    # the same raster run directly gives the same labels
    direct = tmp_path / "direct.labels.zarr"
    main(["run", str(tif), *RUN, "--out", str(direct)])
    np.testing.assert_array_equal(labels_of(out), labels_of(direct))
    assert labels_of(out).shape == (SIZE, SIZE)
    back = pystac.Item.from_file(str(exported))
    links = [link for link in back.links if link.rel == "derived_from"]
    assert [link.href for link in links] == [str(item.absolute())]
    assert back.datetime == dt.datetime(2024, 6, 1, tzinfo=dt.UTC)
    assert back.properties["reattn:datetime_source"] == "scene"


def test_asset_picks_a_named_asset(tmp_path):
    rgb = write_tif(tmp_path / "rgb.tif", 356000.0, 2)
    other = write_tif(tmp_path / "other.tif", 356000.0, 3)
    item = make_item("two", rgb, {"visual": "visual"})
    item.add_asset("analytic", pystac.Asset(str(other), media_type=pystac.MediaType.GEOTIFF))
    path = save_item(item, tmp_path / "two.json")
    out = tmp_path / "picked.labels.zarr"
    main(["run", str(path), *RUN, "--asset", "analytic", "--out", str(out)])
    attrs = store.read_attrs(out)
    assert attrs["scene"] == str(other.absolute()) and attrs["stac_asset"] == "analytic"
    direct = tmp_path / "direct.labels.zarr"
    main(["run", str(other), *RUN, "--out", str(direct)])
    np.testing.assert_array_equal(labels_of(out), labels_of(direct))


def test_an_item_without_a_usable_asset_is_one_line(tmp_path, capsys):
    tif = write_tif(tmp_path / "b.tif", 356000.0, 4)
    path = save_item(
        make_item("bands", tif, {"B04": "data", "thumbnail": "thumbnail"}), tmp_path / "i.json"
    )
    err = h.fails_with_one_line(capsys, "run", path, *RUN, "--out", tmp_path / "x.labels.zarr")
    assert "--asset" in err and "B04" in err and "thumbnail" in err
    err = h.fails_with_one_line(
        capsys, "run", path, *RUN, "--asset", "B99", "--out", tmp_path / "x.labels.zarr"
    )
    assert "B99" in err and "B04, thumbnail" in err
    err = h.fails_with_one_line(
        capsys, "run", tif, *RUN, "--asset", "visual", "--out", tmp_path / "x.labels.zarr"
    )
    assert "STAC Item" in err
    assert not (tmp_path / "x.labels.zarr").exists()


# ----------------------------------------------------------------------------- STAC API


SEARCH_SPEC = (
    """\
name: from-stac-api
scenes:
  stac_search:
    url: {url}
    collections: [aerial]
    bbox: [6.0, 50.0, 8.0, 52.0]
    datetime: 2024-05-01T00:00:00Z/2024-07-01T00:00:00Z
    query: {{eo:cloud_cover: {{lt: 20}}}}
classes: building,water
"""
    + h.TINY_MODEL_YAML
    + """\
run:
  block_size: 512
output_root: labels
cluster:
  local: {{workers: 1, threads_per_worker: 1}}
"""
)


def index(root: Path) -> tuple[dict[str, str], dict]:
    data = json.loads((root / "index.json").read_text())
    geo = json.loads((root / "index.geojson").read_text())
    return {Path(e["store"]).name: e["status"] for e in data["scenes"]}, geo


@pytest.fixture
def api():
    server = StacApi("aerial")
    yield server
    server.close()


def test_a_job_from_a_stac_api_search_maps_only_new_items_on_a_rerun(api, tmp_path):
    rasters = [write_tif(tmp_path / f"r{i}.tif", 356000.0 + 100 * i, 10 + i) for i in range(4)]
    api.add(make_item("clear-a", rasters[0], **{"eo:cloud_cover": 5.0}))
    api.add(make_item("clear-b", rasters[1], **{"eo:cloud_cover": 12.0}))
    api.add(make_item("cloudy", rasters[2], **{"eo:cloud_cover": 80.0}))  # filtered out
    spec = tmp_path / "job.yaml"
    spec.write_text(SEARCH_SPEC.format(url=api.url))
    assert h.job_status("run", spec) == 0
    root = tmp_path / "labels"
    statuses, geo = index(root)
    assert statuses == {"clear-a.labels.zarr": "done", "clear-b.labels.zarr": "done"}
    assert api.searches and api.searches[0]["query"] == {"eo:cloud_cover": {"lt": 20}}
    stamp = (root / "clear-a.labels.zarr" / ".zattrs").stat().st_mtime_ns
    # the same raster run directly gives the same labels
    direct = tmp_path / "direct.labels.zarr"
    main(["run", str(rasters[0]), *RUN, "--out", str(direct)])
    np.testing.assert_array_equal(labels_of(root / "clear-a.labels.zarr"), labels_of(direct))
    attrs = store.read_attrs(root / "clear-a.labels.zarr")
    assert attrs["source_stac_item"] == f"{api.url}/collections/aerial/items/clear-a"
    # its relative asset href was joined on the Item's own URL and read from that server
    assert attrs["scene"] == f"/vsicurl/{api.url}/data/{rasters[0].name}"

    api.add(make_item("clear-c", rasters[3], **{"eo:cloud_cover": 1.0}))
    assert h.job_status("run", spec) == 0
    statuses, geo = index(root)
    assert statuses == {
        "clear-a.labels.zarr": "skipped",
        "clear-b.labels.zarr": "skipped",
        "clear-c.labels.zarr": "done",
    }
    assert (root / "clear-a.labels.zarr" / ".zattrs").stat().st_mtime_ns == stamp
    assert not (root / "cloudy.labels.zarr").exists()
    assert len(geo["features"]) == 3
    for feature in geo["features"]:
        shape = shapely.geometry.shape(feature["geometry"])
        assert shape.is_valid and 6.0 < shape.centroid.x < 8.0 and 50.0 < shape.centroid.y < 52.0


def test_a_job_from_a_static_catalog(tmp_path):
    catalog = pystac.Catalog("region", "static test catalog")
    for i in range(2):
        tif = write_tif(tmp_path / f"c{i}.tif", 356000.0 + 100 * i, 20 + i)
        catalog.add_item(make_item(f"cat-{i}", tif))
    catalog.normalize_hrefs(str(tmp_path / "catalog"))
    catalog.save(pystac.CatalogType.SELF_CONTAINED)
    spec = tmp_path / "job.yaml"
    text = SEARCH_SPEC.format(url="x").split("classes:", 1)[1]
    spec.write_text("name: static\nscenes:\n  stac_catalog: catalog/catalog.json\nclasses:" + text)
    assert h.job_status("run", spec) == 0
    statuses, geo = index(tmp_path / "labels")
    assert statuses == {"cat-0.labels.zarr": "done", "cat-1.labels.zarr": "done"}
    attrs = store.read_attrs(tmp_path / "labels" / "cat-0.labels.zarr")
    assert attrs["source_stac_item"] == str(tmp_path / "catalog" / "cat-0" / "cat-0.json")


@pytest.mark.parametrize(
    "scenes, words",
    [
        ("  stac_search: {url: U, bbox: [8, 50, 6, 52]}", "'scenes.stac_search.bbox'"),
        ("  stac_search: {url: U, datetime: last-week}", "'scenes.stac_search.datetime'"),
        ("  stac_search: {url: U, query: {eo:cloud_cover: 20}}", "'scenes.stac_search.query'"),
        ("  stac_search: {url: U, cloud: 20}", "'scenes.stac_search.cloud'"),
        ("  stac_search: {bbox: [6, 50, 8, 52]}", "'scenes.stac_search.url'"),
        ("  stac_catalog: nowhere/catalog.json", "'scenes.stac_catalog'"),
        ("  stac_search: {url: 'http://127.0.0.1:9/'}", "'scenes.stac_search'"),
    ],
)
def test_bad_catalogue_keys_name_the_key(tmp_path, capsys, scenes, words):
    body = SEARCH_SPEC.format(url="x").split("classes:", 1)[1]
    spec = tmp_path / "job.yaml"
    spec.write_text(f"name: bad\nscenes:\n{scenes}\nclasses:{body}")
    assert h.job_status("validate", spec) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1, err


def test_the_deploy_examples_hold_valid_job_specs():
    """deploy/jobs/stac_region.yaml and the spec in the CronJob's ConfigMap pass the job
    spec schema (the search itself needs the network, so it is not run)."""
    import yaml

    from reattn_batch.regional.spec import JobFile

    root = Path(__file__).resolve().parents[1] / "deploy"
    spec = yaml.safe_load((root / "jobs" / "stac_region.yaml").read_text())
    docs = list(yaml.safe_load_all((root / "kubernetes" / "cronjob-stac.yaml").read_text()))
    (config_map,) = [d for d in docs if d["kind"] == "ConfigMap"]
    (cron,) = [d for d in docs if d["kind"] == "CronJob"]
    embedded = yaml.safe_load(config_map["data"]["stac_region.yaml"])
    for data in (spec, embedded):
        job_file = JobFile.model_validate(data)
        assert job_file.scenes.stac_search.query == {"eo:cloud_cover": {"lt": 20}}
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["job", "run", "/etc/reattn-batch/stac_region.yaml"]
    timer = (root / "systemd" / "reattn-batch-stac.timer").read_text()
    service = (root / "systemd" / "reattn-batch-stac.service").read_text()
    assert "OnCalendar=" in timer and "job run /etc/reattn-batch/stac_region.yaml" in service
