"""Issue 11 item 3: a safe ``--overwrite``: it deletes only a store reattn-batch made.

Never the input scene (``run a.zarr --out a.zarr --overwrite``), never a foreign Zarr (a
datacube with ``.zgroup`` or ``zarr.json``), never a non-empty folder that is not a
store; a store of reattn-batch is still replaced.
"""

from __future__ import annotations

import cli_helpers as h
import numpy as np
import pytest
import zarr

pytestmark = pytest.mark.timeout(300)


def _refused_untouched(result: h.Result, path, digest: str) -> str:
    line = h.one_clean_error(result)
    h.not_a_usage_error(line)
    assert str(path.name) in line, line  # names the path it will not delete
    assert h.tree_digest(path) == digest, f"{path} was changed"
    return line


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return h.write_scene(tmp_path_factory.mktemp("scene") / "scene.tif", 300, 260)


def test_overwrite_never_deletes_the_input_scene(tmp_path):
    source = h.write_zarr_scene(tmp_path / "a.zarr", 300, 260)
    digest = h.tree_digest(source)
    result = h.cli("run", source, "--variable", "image", *h.CLASSES, *h.TINY,
                   "--out", source, "--overwrite")  # fmt: skip
    _refused_untouched(result, source, digest)


def _datacube_v2(path) -> None:
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    root.attrs["title"] = "somebody's datacube"
    root.create_array("ndvi", shape=(4, 64, 64), chunks=(1, 64, 64), dtype="float32")[:] = 0.5


def _datacube_v3(path) -> None:
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    root.attrs["title"] = "somebody's datacube"
    root.create_array("ndvi", shape=(4, 64, 64), chunks=(1, 64, 64), dtype="float32")[:] = 0.5


@pytest.mark.parametrize(
    "make", [pytest.param(_datacube_v2, id="zgroup"), pytest.param(_datacube_v3, id="zarr.json")]
)
def test_overwrite_never_deletes_a_foreign_zarr(tmp_path, scene, make):
    cube = tmp_path / "cube.zarr"
    make(cube)
    digest = h.tree_digest(cube)
    result = h.cli("run", scene, *h.CLASSES, *h.TINY, "--out", cube, "--overwrite")
    _refused_untouched(result, cube, digest)


def test_overwrite_never_deletes_a_folder_that_is_not_a_store(tmp_path, scene):
    folder = tmp_path / "results"
    (folder / "sub").mkdir(parents=True)
    (folder / "notes.txt").write_text("keep me")
    (folder / "sub" / "table.csv").write_text("a,b\n1,2\n")
    digest = h.tree_digest(folder)
    result = h.cli("run", scene, *h.CLASSES, *h.TINY, "--out", folder, "--overwrite")
    _refused_untouched(result, folder, digest)


def test_overwrite_replaces_a_store_reattn_batch_made(tmp_path, scene):
    store = tmp_path / "s.zarr"
    h.ok(h.cli("run", scene, "--classes", "building,road", *h.TINY, "--out", store))
    first = h.attrs(store)
    h.ok(h.cli("run", scene, *h.CLASSES, *h.TINY, "--out", store, "--overwrite"))
    second = h.attrs(store)
    assert second["class_names"] == ["background", "building", "road", "water", "tree"]
    assert second["run_fingerprint"] != first["run_fingerprint"]
    assert second["complete"] is True
    labels = h.labels(store)
    assert labels.shape == (260, 300) and labels.max() <= 4 and len(np.unique(labels)) > 1
