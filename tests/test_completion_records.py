"""Issue 11 item 7: durable records. A zero-byte or unreadable completion record is
redone on ``--resume`` (its block recomputed), never a traceback.

LAYOUT ASSUMPTION (tests/cli_helpers.py): records are the uint8 array
``block_done`` of the store, many blocks per chunk file (item 6); the bad record is planted
as the chunk file holding block (0, 1), so every block of that chunk counts as not done.

Not tested here (not observable from outside): that a record never becomes visible
before its block's data is durable (fsync); see store/records.py and README.
"""

from __future__ import annotations

import cli_helpers as h
import numpy as np
import pytest
import zarr

pytestmark = pytest.mark.timeout(400)
BLOCK = ["--block-size", "512"]


@pytest.fixture(scope="module")
def scene_and_clean(tmp_path_factory):
    folder = tmp_path_factory.mktemp("records")
    scene = h.write_scene(folder / "scene.tif", 700, 600)  # 2 x 2 blocks of 512
    clean = folder / "clean.zarr"
    h.ok(h.cli("run", scene, *h.CLASSES, *h.TINY, *BLOCK, "--out", clean))
    return scene, h.labels(clean)


@pytest.mark.parametrize(
    "content", [pytest.param(b"", id="zero-byte"), pytest.param(b"\x00garbage\xff", id="garbage")]
)
def test_a_bad_record_is_redone_on_resume(tmp_path, scene_and_clean, content):
    scene, clean = scene_and_clean
    store = tmp_path / "s.zarr"
    h.ok(h.cli("run", scene, *h.CLASSES, *h.TINY, *BLOCK, "--out", store))
    records = h.record_files(store)
    assert len(records) == 1, records  # LAYOUT ASSUMPTION: the 2 x 2 records in one file
    record = h.record_file(store, 0, 1)  # block (0, 1): rows 0:512, cols 512:700
    assert record in records
    record.write_bytes(content)  # as after a crash between create and write, or bit rot
    zarr.open_group(str(store), mode="r+")["labels"][0:512, 512:700] = 7  # its torn data
    result = h.ok(h.cli("run", scene, *h.CLASSES, *h.TINY, *BLOCK, "--out", store, "--resume"))
    assert "Traceback" not in result.stderr
    assert h.attrs(store)["complete"] is True
    assert np.array_equal(h.labels(store), clean)  # the block was recomputed
