"""Issue 19 item 4: ``--resume`` trusts a store's completion records only when the store
fits the run: record arrays of the plan's block grid, ``labels`` of the scene's shape and
chunks, a recorded block size equal to the run's. Otherwise one line naming what differs,
before anything is computed, and the store is left as it is (before: a store whose
records are 2 x 2 resumed on a 4 x 4 plan skipped the wrong blocks, or failed after
computing).

An all-nodata scene (no crop is run, so mapping it is quick) is mapped once for real; each
test copies that store and edits it with zarr, as an older version, a hand edit or a bug
could leave it, with one block's record dropped so that the resume has work to do.
"""

from __future__ import annotations

import json
import shutil

import cli_helpers as h
import numpy as np
import pytest
import zarr
from distributed import LocalCluster

from reattn_batch.cli import main

pytestmark = pytest.mark.timeout(300)
SIZE = 2048  # px: 2 x 2 blocks of 1024, 4 x 4 of 512


@pytest.fixture(scope="module")
def scheduler():
    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=":0") as cluster:
        yield cluster.scheduler_address


def _run(scene, store, scheduler, *extra: str) -> None:
    main(["run", str(scene), *h.CLASSES, *h.TINY, "--scheduler", scheduler,
          "--out", str(store), *extra])  # fmt: skip


@pytest.fixture(scope="module")
def mapped(tmp_path_factory, scheduler):
    """(scene, store): the scene mapped in blocks of 1024 px (2 x 2 records)."""
    folder = tmp_path_factory.mktemp("trust")
    data = np.zeros((3, SIZE, SIZE), np.uint8)
    scene = h.write_scene(folder / "empty.tif", SIZE, SIZE, data=data, nodata=0)
    store = folder / "mapped.zarr"
    _run(scene, store, scheduler, "--block-size", "1024")
    assert h.attrs(store)["complete"] is True
    assert zarr.open_array(str(store / "block_done"), mode="r").shape == (2, 2)
    return scene, store


def _edit_attrs(store, **changes) -> None:
    """Rewrite the group attributes (None: remove the key) and the consolidated copy."""
    path = store / ".zattrs"
    attrs = json.loads(path.read_text())
    for key, value in changes.items():
        attrs.pop(key, None) if value is None else attrs.__setitem__(key, value)
    path.write_text(json.dumps(attrs))
    zarr.consolidate_metadata(str(store))


def _replace_labels(store, shape, chunks) -> None:
    group = zarr.open_group(str(store), mode="r+", zarr_format=2, use_consolidated=False)
    attrs = dict(group["labels"].attrs)
    group.create_array(
        "labels", shape=shape, chunks=chunks, dtype="uint8", fill_value=255, overwrite=True,
        chunk_key_encoding={"name": "v2", "separator": "/"}, attributes=attrs,
    )  # fmt: skip
    zarr.consolidate_metadata(str(store))


def _records_of_an_older_store(store):
    """Records of 2 x 2 blocks and no ``block_size`` attribute: the run plans its own."""
    _edit_attrs(store, block_size=None)
    return ["--block-size", "512"], ["block_done records a 2x2 block grid", "4x4"]


def _a_block_size_that_is_no_block_size(store):
    """A recorded block size the run cannot use (a hand edit): the records are of this
    run's grid, yet nothing says which blocks they were made for."""
    _edit_attrs(store, block_size=0)
    return ["--block-size", "1024"], ["its block size is 0 px, this run's 1024"]


def _labels_in_other_chunks(store):
    _replace_labels(store, (SIZE, SIZE), (256, 256))
    return [], ["labels has chunks of 256x256 px, not 512x512"]


def _labels_of_another_shape(store):
    _replace_labels(store, (SIZE, SIZE - 512), (512, 512))
    return [], [f"labels is {SIZE}x{SIZE - 512} px, the scene {SIZE}x{SIZE}"]


@pytest.mark.parametrize(
    "craft",
    [
        pytest.param(_records_of_an_older_store, id="records-2x2-plan-4x4"),
        pytest.param(_a_block_size_that_is_no_block_size, id="block-size"),
        pytest.param(_labels_in_other_chunks, id="labels-chunks"),
        pytest.param(_labels_of_another_shape, id="labels-shape"),
    ],
)
def test_resume_of_a_store_that_does_not_fit_the_run_is_refused_before_computing(
    mapped, scheduler, tmp_path, capsys, craft
):
    scene, pristine = mapped
    store = tmp_path / "s.zarr"
    shutil.copytree(pristine, store)
    zarr.open_array(str(store / "block_done"), mode="r+")[0, 0] = 0  # one block to redo
    _edit_attrs(store, complete=False)
    extra, expected = craft(store)
    before = h.tree_digest(store)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        _run(scene, store, scheduler, "--resume", *extra)
    assert exit_info.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith(h.ERROR_PREFIX), err
    line = err[0]
    for part in ["does not fit this run", "--overwrite", *expected]:
        assert part in line, line
    assert h.tree_digest(store) == before  # nothing computed, nothing written
