"""Issue 11 item 9: clean errors everywhere. One line on stderr, non-zero exit, no
traceback, no Dask "Compute Failed" log; odd inputs that must work do work.

All through ``python -m reattn_batch run`` on the embedded LocalCluster, so the workers'
own stderr is the run's stderr, as a user sees it.
"""

from __future__ import annotations

import re

import cli_helpers as h
import numpy as np
import pytest
import rasterio
from rasterio.control import GroundControlPoint

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return h.write_scene(tmp_path_factory.mktemp("scene") / "scene.tif", 300, 260)  # 0.5 m


def test_a_corrupt_tile_gives_exactly_one_line(tmp_path):
    scene = h.write_scene(tmp_path / "corrupt.tif", 1000, 1000, compress="deflate")
    with rasterio.open(scene) as ds:  # the tile at tile row 3, col 3: rows/cols 768:1000
        offset = int(ds.get_tag_item("BLOCK_OFFSET_3_3", "TIFF", bidx=1))
    with open(scene, "r+b") as f:
        f.seek(offset)
        f.write(b"\xff" * 2000)
    out = tmp_path / "o.zarr"
    result = h.cli("run", scene, *h.CLASSES, *h.TINY, "--block-size", 512, "--out", out)
    line = h.one_clean_error(result)
    found = re.search(r"rows (\d+):(\d+), cols (\d+):(\d+)", line)
    assert found and "--resume" in line, line
    r0, r1, c0, c1 = map(int, found.groups())
    assert r0 < 1000 and r1 > 768 and c0 < 1000 and c1 > 768  # the window holds the bad tile
    assert h.attrs(out).get("complete") is not True  # resumable, not marked done


GSD_CASES = [
    pytest.param("nan"),
    pytest.param("inf"),
    pytest.param("-inf"),
    pytest.param("0"),
    pytest.param("-0.5"),
    pytest.param("1e-6"),
]  # fmt: skip


@pytest.mark.parametrize("gsd", GSD_CASES)
def test_bad_gsd_gives_one_line(tmp_path, scene, gsd):
    # 8 GiB address space: an absurd grid fails there instead of eating the machine
    proc = h.start("run", scene, *h.CLASSES, *h.TINY, "--gsd", gsd, "--out", tmp_path / "o.zarr",
                   memory_cap=8 << 30)  # fmt: skip
    result = h.finish(proc, timeout=120)
    line = h.one_clean_error(result)
    assert "--gsd" in line, line
    assert not (tmp_path / "o.zarr").exists()


def test_a_classes_file_with_a_bom_gives_the_same_classes(tmp_path, scene):
    text = "background\nbuilding\nroad,street\n"
    plain, bom = tmp_path / "plain.txt", tmp_path / "bom.txt"
    plain.write_text(text, encoding="utf-8")
    bom.write_text(text, encoding="utf-8-sig")
    assert bom.read_bytes().startswith(b"\xef\xbb\xbf")
    names = []
    for classes in (plain, bom):
        store = tmp_path / f"{classes.stem}.zarr"
        h.ok(h.cli("run", scene, "--classes-file", classes, *h.TINY, "--out", store))
        names.append(h.attrs(store)["class_names"])
    assert names[0] == ["background", "building", "road"]
    assert names[1] == names[0]


def test_a_stretch_with_equal_percentiles_warns_or_asks_for_stretch(tmp_path):
    scene = h.write_scene(
        tmp_path / "flat.tif", 300, 260, data=np.full((3, 260, 300), 1000, np.uint16)
    )
    store = tmp_path / "o.zarr"
    result = h.cli("run", scene, *h.CLASSES, *h.TINY, "--out", store)
    assert "Traceback" not in result.stderr and not result.timed_out
    if result.rc == 0:
        warnings = [
            line for line in result.stderr.splitlines()
            if "WARNING" in line and re.search(r"stretch|percentile", line, re.I)
        ]  # fmt: skip
        assert warnings, result.stderr[-3000:]
    else:
        assert "--stretch" in h.one_clean_error(result)


def test_an_explicit_stretch_on_a_constant_scene_works(tmp_path):
    """The way out the warning names: --stretch LO,HI maps the scene without complaint."""
    scene = h.write_scene(
        tmp_path / "flat.tif", 300, 260, data=np.full((3, 260, 300), 1000, np.uint16)
    )
    store = tmp_path / "o.zarr"
    h.ok(h.cli("run", scene, *h.CLASSES, *h.TINY, "--stretch", "0,3000", "--out", store))
    assert h.attrs(store)["stretch"] == [0.0, 3000.0]
    assert (h.labels(store) != 255).all()


def test_gcp_only_georeferencing_is_refused_or_warped(tmp_path):
    data = (h.texture(260, 300) * 255).astype("uint8")
    gcps = [
        GroundControlPoint(row, col, 356000.0 + 0.5 * col, 5645000.0 - 0.5 * row)
        for row, col in ((0, 0), (0, 300), (260, 0), (260, 300))
    ]
    scene = tmp_path / "gcps.tif"
    with rasterio.open(scene, "w", driver="GTiff", width=300, height=260, count=3,
                       dtype="uint8", gcps=gcps, crs="EPSG:25832") as ds:  # fmt: skip
        ds.write(data)
    with rasterio.open(scene) as ds:
        assert ds.crs is None and len(ds.gcps[0]) == 4  # georeferenced by GCPs only
    store = tmp_path / "o.zarr"
    result = h.cli("run", scene, *h.CLASSES, *h.TINY, "--out", store)
    assert "Traceback" not in result.stderr and not result.timed_out
    if result.rc != 0:
        assert "GCP" in h.one_clean_error(result).upper()
        return
    with rasterio.open(f'ZARR:"{store}":/labels') as out:  # a documented warp: georeferenced
        assert out.crs is not None and out.crs.to_epsg() == 25832
        assert not out.transform.is_identity
        west, south, east, north = out.bounds
        assert 355990 < west < 356010 and 5644860 < south < 5644880
