"""A regional job's scenes in flight together (issue 18 item 1), on a real scheduler with
two workers (loopback) and the tiny model:

- the blocks of several scenes compute at the same moment (the scheduler's own record of
  which tasks were processing when), and one text task serves the whole job;
- each store equals the same scene mapped alone (`map_scene` on the same cluster), bit
  for bit, with the same run fingerprint;
- a scene whose block fails mid-run (a corrupt tile that opens fine) fails only itself:
  one line naming its window, its finished blocks kept, the other scenes done;
- a second run skips the finished stores and fails the corrupt one again.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import cli_helpers as h
import numpy as np
import pytest
import rasterio
from cluster_helpers import (
    dask_processes,
    install_task_timeline,
    most_at_once,
    register_by_value,
    task_timeline,
)
from distributed import Client

from reattn_batch import map_scene
from reattn_batch.store import done_blocks

SPEC = (
    """\
name: in-flight
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
  scheduler_file: {scheduler_file}
"""
)
GOOD = ("a", "c", "d", "e")  # one-block scenes; "b" is four blocks with a corrupt tile


@pytest.fixture
def cache_env(tmp_path_factory) -> dict[str, str]:
    return {"REATTN_BATCH_CACHE": str(tmp_path_factory.getbasetemp() / "cache")}


def _corrupt_tile(path: Path) -> None:
    """Overwrite the deflate tile at tile row 3, col 3 (rows/cols 768:1000)."""
    with rasterio.open(path) as ds:
        offset = int(ds.get_tag_item("BLOCK_OFFSET_3_3", "TIFF", bidx=1))
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(b"\xff" * 2000)


def _scene_of(key: str) -> str | None:
    """block-{fingerprint}-{run}-{index} -> fingerprint-run (one scene's run)."""
    if not key.startswith("block-"):
        return None
    return key.rsplit("-", 1)[0]


@pytest.mark.timeout(400)
def test_scenes_share_the_window_and_a_failing_scene_fails_alone(tmp_path, cache_env):
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    for seed, name in enumerate(GOOD):
        h.write_scene(scenes / f"{name}.tif", 300 + 20 * seed, 260, seed=seed)
    h.write_scene(scenes / "b.tif", 1000, 1000, compress="deflate", seed=9)
    _corrupt_tile(scenes / "b.tif")
    labels = tmp_path / "labels"
    with dask_processes(
        tmp_path / "dask", n_workers=2, worker_args=("--nthreads", "1"), env=cache_env
    ) as procs:
        spec = tmp_path / "job.yaml"
        spec.write_text(SPEC.format(scheduler_file=procs.scheduler_file))
        with Client(scheduler_file=str(procs.scheduler_file), timeout="60s") as client:
            client.wait_for_workers(2, timeout=120)
            register_by_value()
            client.run_on_scheduler(install_task_timeline)

            result = h.cli("job", "run", spec, timeout=300, extra_env=cache_env)
            events = client.run_on_scheduler(task_timeline)

            assert result.rc == 1, result.stderr[-3000:]  # a failed scene, not a bad spec
            assert "Traceback" not in result.stderr
            summary = json.loads((labels / "summary.json").read_text())
            assert summary["counts"] == {"done": 4, "resumed": 0, "skipped": 0, "failed": 1}
            by_name = {Path(e["uri"]).stem: e for e in summary["scenes"]}

            # Several scenes computed at once; one text task for the whole job.
            assert most_at_once(events, _scene_of) >= 2
            text_tasks = {k for k, _, _ in events if k.startswith("embed_queries_timed")}
            assert len(text_tasks) == 1, text_tasks

            # The failing scene: one line naming the bad block's window; resumable.
            broken = by_name["b"]
            assert broken["status"] == "failed" and "\n" not in broken["message"]
            found = re.search(r"rows (\d+):(\d+), cols (\d+):(\d+)", broken["message"])
            assert found and "resume" in broken["message"], broken["message"]
            r0, r1, c0, c1 = map(int, found.groups())
            assert r1 > 768 and c1 > 768  # the window holds the corrupt tile
            broken_store = labels / "b.labels.zarr"
            assert h.attrs(broken_store).get("complete") is not True
            assert 3 not in done_blocks(broken_store)  # the bad block has no record

            # Each good store equals its scene mapped alone on the same workers.
            for name in GOOD:
                entry = by_name[name]
                assert entry["status"] == "done" and entry["computed"] == 1, entry
                alone = map_scene(
                    scenes / f"{name}.tif", "building,road,water,tree", tmp_path / f"{name}.zarr",
                    client, clip_weights="random", upsampler="bilinear", device="cpu",
                    clip_model="ViT-T-16-test", block_size=512,
                )  # fmt: skip
                ours = labels / f"{name}.labels.zarr"
                np.testing.assert_array_equal(h.labels(ours), h.labels(alone.out))
                assert h.attrs(ours)["run_fingerprint"] == h.attrs(alone.out)["run_fingerprint"]
                assert h.attrs(ours)["complete"] is True

            # Run again: the finished stores are skipped, the corrupt scene fails again.
            again = h.cli("job", "run", spec, timeout=300, extra_env=cache_env)
            assert again.rc == 1, again.stderr[-3000:]
            summary = json.loads((labels / "summary.json").read_text())
            assert summary["counts"] == {"done": 0, "resumed": 0, "skipped": 4, "failed": 1}
