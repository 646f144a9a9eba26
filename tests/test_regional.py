"""`reattn-batch job run SPEC.yaml`: scheduled regional jobs (pipeline/regional/).

Three small scenes, one of them broken: the job maps the two good ones, records the broken
one as failed and exits 1; a second run skips the finished stores without starting a
cluster; a store with one block's completion record removed is resumed, that block only.
Tiny model (ViT-T-16-test, bilinear upsampler, random weights).
"""

from __future__ import annotations

import json
from pathlib import Path

import cli_helpers as h
import numpy as np
import pytest
import rasterio
import zarr
from conftest import shared_file
from pyproj import Transformer
from rasterio.windows import Window

from reattn_batch import store
from reattn_batch.regional import runner
from reattn_batch.regional.spec import RegionalJob
from reattn_batch.workers.errors import UserError

SPEC = (
    """\
name: test-region
scenes:
  glob: scenes/*.tif
classes: building,road,water,tree
"""
    + h.TINY_MODEL_YAML
    + """\
run:
  block_size: 512
output_root: labels
cluster:
  local: {workers: 1, threads_per_worker: 1}
"""
)


def _window(src: Path, out: Path, window: Window) -> tuple[float, float, float, float]:
    """Write ``window`` of ``src`` as a GeoTIFF; returns its bounds in EPSG:4326."""
    with rasterio.open(src) as ds:
        transform = ds.window_transform(window)
        profile = ds.profile | {
            "width": window.width, "height": window.height, "transform": transform,
            "tiled": True, "blockxsize": 256, "blockysize": 256,
        }  # fmt: skip
        with rasterio.open(out, "w", **profile) as dst:
            dst.write(ds.read(window=window))
        to_wgs84 = Transformer.from_crs(ds.crs, "EPSG:4326", always_xy=True)
    xs, ys = zip(
        *(transform @ (c, r) for c in (0, window.width) for r in (0, window.height)), strict=True
    )
    lon, lat = to_wgs84.transform(xs, ys)
    return min(lon), min(lat), max(lon), max(lat)


def _by_name(entries: list[dict]) -> dict[str, dict]:
    return {Path(e["uri"]).name: e for e in entries}


def _mtimes(path: Path) -> dict[str, int]:
    return {str(p.relative_to(path)): p.stat().st_mtime_ns for p in path.rglob("*") if p.is_file()}


def test_job_maps_skips_and_resumes_and_records_the_broken_scene(tmp_path, monkeypatch):
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    koeln_bounds = _window(
        shared_file("rasters/oem_koeln_50.tif"), scenes / "koeln.tif", Window(100, 200, 600, 400)
    )  # 600 x 400 px: two blocks of 512
    cogeo_bounds = _window(
        shared_file("rasters/cogeo.tif"), scenes / "cogeo.tif", Window(300, 300, 400, 300)
    )
    (scenes / "broken.tif").write_bytes(np.random.default_rng(0).bytes(4096))
    spec = tmp_path / "region.yaml"
    spec.write_text(SPEC)
    labels = tmp_path / "labels"
    koeln, cogeo = labels / "koeln.labels.zarr", labels / "cogeo.labels.zarr"

    # 1. Everything new: two stores mapped, the broken scene failed, exit status 1.
    assert h.job_status("run", spec) == 1
    summary = json.loads((labels / "summary.json").read_text())
    assert summary["counts"] == {"done": 2, "resumed": 0, "skipped": 0, "failed": 1}
    assert summary["exit_status"] == 1 and summary["spec"] == str(spec)
    assert summary["software_version"]
    got = _by_name(summary["scenes"])
    broken = got["broken.tif"]
    assert broken["status"] == "failed" and "\n" not in broken["message"]
    assert "broken.tif" in broken["message"] and "not a raster" in broken["message"]
    assert broken["bbox"] is None and not Path(broken["store"]).exists()
    assert got["koeln.tif"]["blocks"] == got["koeln.tif"]["computed"] == 2
    assert got["cogeo.tif"]["blocks"] == 1 and got["cogeo.tif"]["crops"] > 0
    for out, shape in ((koeln, (400, 600)), (cogeo, (300, 400))):
        attrs = store.read_attrs(out)
        assert attrs["complete"] is True
        data = zarr.open_group(str(out), mode="r")["labels"][:]
        assert data.shape == shape and data.max() <= 4  # background + 4 classes, no nodata
    with rasterio.open(f'ZARR:"{koeln}":/labels') as ds:
        assert ds.crs.to_epsg() == 25832 and (ds.width, ds.height) == (600, 400)

    # The index: same statuses; footprints in EPSG:4326 around the windows' corners.
    index = json.loads((labels / "index.json").read_text())
    assert {k: e["status"] for k, e in _by_name(index["scenes"]).items()} == {
        "broken.tif": "failed", "cogeo.tif": "done", "koeln.tif": "done",
    }  # fmt: skip
    geo = json.loads((labels / "index.geojson").read_text())
    assert geo["type"] == "FeatureCollection" and len(geo["features"]) == 3
    features = {Path(f["properties"]["uri"]).name: f for f in geo["features"]}
    assert features["broken.tif"]["geometry"] is None
    assert features["broken.tif"]["properties"]["message"] == broken["message"]
    for name, expected in (("koeln.tif", koeln_bounds), ("cogeo.tif", cogeo_bounds)):
        feature = features[name]
        assert feature["geometry"]["type"] == "Polygon"
        assert (
            feature["properties"]["run_fingerprint"]
            == store.read_attrs(labels / f"{Path(name).stem}.labels.zarr")["run_fingerprint"]
        )
        ring = np.array(feature["geometry"]["coordinates"][0])
        bbox = [*ring.min(axis=0), *ring.max(axis=0)]
        np.testing.assert_allclose(bbox, expected, atol=1e-6)
    assert 6.7 < koeln_bounds[0] < 7.1 and 50.8 < koeln_bounds[1] < 51.1  # Cologne
    assert 128.4 < cogeo_bounds[0] < 128.9 and 37.3 < cogeo_bounds[1] < 37.9

    # 2. Again: the finished scenes are skipped without even a cluster; broken still fails.
    before = {out: _mtimes(out) for out in (koeln, cogeo)}
    first_labels = zarr.open_group(str(koeln), mode="r")["labels"][:]

    def no_cluster(request):
        raise AssertionError("nothing to compute, yet the job connected to a cluster")

    with monkeypatch.context() as m:
        m.setattr(runner, "connect", no_cluster)
        assert h.job_status("run", spec, "--summary", tmp_path / "again.json") == 1
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["counts"] == {"done": 0, "resumed": 0, "skipped": 2, "failed": 1}
    assert _by_name(again["scenes"])["broken.tif"]["message"] == broken["message"]
    assert all(_mtimes(out) == before[out] for out in (koeln, cogeo))

    # 3. A partial store (block 1's completion record lost): resumed, that block only.
    zarr.open_array(str(koeln / "block_done"), mode="r+")[0, 1] = 0
    store.update_attrs(koeln, complete=False)
    chunk0, chunk1 = koeln / "labels" / "0" / "0", koeln / "labels" / "0" / "1"
    stamp0, stamp1 = chunk0.stat().st_mtime_ns, chunk1.stat().st_mtime_ns
    assert h.job_status("run", spec) == 1
    third = json.loads((labels / "summary.json").read_text())
    assert third["counts"] == {"done": 0, "resumed": 1, "skipped": 1, "failed": 1}
    resumed = _by_name(third["scenes"])["koeln.tif"]
    assert resumed["status"] == "resumed" and resumed["complete"] is True
    assert (resumed["blocks"], resumed["computed"], resumed["blocks_done"]) == (2, 1, 2)
    assert chunk0.stat().st_mtime_ns == stamp0 and chunk1.stat().st_mtime_ns != stamp1
    assert np.array_equal(zarr.open_group(str(koeln), mode="r")["labels"][:], first_labels)
    assert store.read_attrs(koeln)["complete"] is True


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (lambda s: s.replace("classes:", "clases:"), "'clases'"),
        (
            lambda s: s.replace("upsampler: bilinear", "upsampler: bilinear\n  methd: x"),
            "model.methd",
        ),
        (lambda s: s.replace("clip_model:", "clip_modl:"), "clip_modl"),
        (lambda s: s.replace("block_size: 512", "block_size: 500"), "run.block_size"),
        (lambda s: s.replace("local:", "locl:"), "cluster.locl"),
        (lambda s: s.replace("glob: scenes/*.tif", "glob: nowhere/*.tif"), "scenes.glob"),
    ],
)
def test_a_bad_spec_exits_2_naming_the_key(tmp_path, capsys, edit, key):
    (tmp_path / "scenes").mkdir()
    (tmp_path / "scenes" / "a.tif").write_bytes(b"")
    spec = tmp_path / "bad.yaml"
    spec.write_text(edit(SPEC))
    assert h.job_status("run", spec) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("reattn-batch: error: job spec") and key in err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "labels").exists()


def test_url_file_list_and_class_synonyms(tmp_path):
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "scenes.txt").write_text(
        "# region A\n\n"
        "/vsicurl/https://example.org/cogs/a.tif\n"
        "s3://bucket/region/b.tif\n"
        "  local/c.tif  \n"
        "# s3://bucket/region/commented.tif\n"
        "s3://bucket/region/b.tif\n"
    )
    spec = tmp_path / "job.yaml"
    spec.write_text(
        "scenes: {url_file: lists/scenes.txt}\n"
        "classes: [building, [road, parking lot], water/river]\n"
        "model: {clip_weights: random, upsampler: bilinear, prob_thd: 0.1}\n"
        "output_root: out\n"
        "cluster: {scheduler_file: dask/scheduler.json}\n"
    )
    job = RegionalJob.load(spec)
    assert job.name == "job"
    assert job.scenes == (
        "/vsicurl/https://example.org/cogs/a.tif",
        "s3://bucket/region/b.tif",
        str(tmp_path / "lists" / "local" / "c.tif"),
    )
    assert [job.store_for(s).name for s in job.scenes] == [
        "a.labels.zarr", "b.labels.zarr", "c.labels.zarr",
    ]  # fmt: skip
    assert job.store_for(job.scenes[0]).parent == tmp_path / "out"
    assert job.classes.names == ["background", "building", "road", "water"]
    assert job.classes.synonyms[2] == ("road", "parking lot")
    assert job.model.cfg.prob_thd == pytest.approx(0.1)
    assert job.cluster.scheduler_file == tmp_path / "dask" / "scheduler.json"

    spec.write_text(
        spec.read_text().replace("url_file: lists/scenes.txt", "list: [x/a.tif, y/a.tif]")
    )
    with pytest.raises(UserError, match="scenes.list.*both write a.labels.zarr"):
        RegionalJob.load(spec)


def test_the_example_spec_is_valid(tmp_path):
    example = Path(__file__).resolve().parents[1] / "configs" / "jobs" / "example_region.yaml"
    (tmp_path / "cogs").mkdir()
    (tmp_path / "cogs" / "t1.tif").write_bytes(b"")
    text = example.read_text().replace("/data/region/cogs/*.tif", str(tmp_path / "cogs/*.tif"))
    spec = tmp_path / "example.yaml"
    spec.write_text(text)
    job = RegionalJob.load(spec)
    assert job.classes.names == ["background", "building", "road", "water", "tree"]
    assert job.model.cfg.method == "reattnclip" and job.model.upsampler == "jbu_one"
    assert job.scenes == (str(tmp_path / "cogs" / "t1.tif"),)
    assert job.output_root == Path("/data/region/labels") and job.settings.block_size == "auto"
