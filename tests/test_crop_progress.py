"""Issue 11 item 10: progress a person can trust. A one-block job logs progress inside
the block (crops done of the block's crops), not only "blocks 1/1" at the very end.

What is printed today (pipeline's JobProgress): a live bar of blocks on a terminal, else
a log line "blocks D/N, R MP/s, ETA E" every 10 s *when a block finishes*; so a one-block
job is silent until it is done. The run here has no terminal (pipes).

Interface assumed for the fix (notes/issue11-plan.md): the interval of progress log
lines is ``$REATTN_BATCH_PROGRESS_INTERVAL`` seconds (default 10); set to 1 here so
that a block of a few seconds shows its progress. A crop-progress line is any log
line that mentions crops and a fraction ``d/n`` with 0 < d < n.
"""

from __future__ import annotations

import re

import cli_helpers as h
import pytest

FRACTION = re.compile(r"(\d+)\s*/\s*(\d+)")


def _partial_crop_lines(stderr: str) -> list[str]:
    found = []
    for line in stderr.splitlines():
        if "crop" not in line.lower():
            continue
        if any(0 < int(d) < int(n) for d, n in FRACTION.findall(line)):
            found.append(line)
    return found


@pytest.mark.timeout(400)
def test_a_one_block_job_logs_crop_progress_inside_the_block(tmp_path):
    scene = h.write_scene(tmp_path / "scene.tif", 1024, 1024)  # one 2048 block, ~100 crops
    interval = {"REATTN_BATCH_PROGRESS_INTERVAL": "1"}
    result = h.ok(h.cli("run", scene, *h.CLASSES, *h.TINY, "--out", tmp_path / "o.zarr",
                        extra_env=interval))  # fmt: skip
    lines = result.stderr.splitlines()
    end = next((i for i, line in enumerate(lines) if "blocks 1/1" in line), len(lines))
    partial = _partial_crop_lines("\n".join(lines[:end]))
    assert partial, "no crop progress before the block finished:\n" + result.stderr[-3000:]
