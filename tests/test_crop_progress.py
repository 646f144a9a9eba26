"""Issue 11 item 10 and issue 19 item 9: progress a person can trust. A one-block job logs
progress inside the block (crops done of the block's crops), not only "blocks 1/1" at the
very end, and its rate (MP/s) and ETA count the crops done inside the running block, so
they are not "0 MP/s, ETA -" until the block ends.

The run here has no terminal (pipes): progress is a log line every
``$REATTN_BATCH_PROGRESS_INTERVAL`` seconds, set to 1 so that a block of a few seconds
shows its progress. A crop-progress line is any log line that mentions crops and a
fraction ``d/n`` with 0 < d < n.
"""

from __future__ import annotations

import re
import time

import cli_helpers as h
import pytest

from reattn_batch.run.progress import RunProgress

FRACTION = re.compile(r"(\d+)\s*/\s*(\d+)")
RATE = re.compile(r"([0-9.e+-]+) MP/s")
ETA = re.compile(r"ETA (\S+)")


def _partial_crop_lines(stderr: str) -> list[str]:
    found = []
    for line in stderr.splitlines():
        if "crop" not in line.lower():
            continue
        if any(0 < int(d) < int(n) for d, n in FRACTION.findall(line)):
            found.append(line)
    return found


@pytest.fixture(scope="module")
def before_the_block_ends(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], str]:
    """Crop-progress lines a one-block run logged before "blocks 1/1", and its stderr."""
    tmp = tmp_path_factory.mktemp("one_block")
    scene = h.write_scene(tmp / "scene.tif", 1024, 1024)  # one 2048 block, ~100 crops
    interval = {"REATTN_BATCH_PROGRESS_INTERVAL": "1"}
    result = h.ok(h.cli("run", scene, *h.CLASSES, *h.TINY, "--out", tmp / "o.zarr",
                        extra_env=interval))  # fmt: skip
    lines = result.stderr.splitlines()
    end = next((i for i, line in enumerate(lines) if "blocks 1/1" in line), len(lines))
    return _partial_crop_lines("\n".join(lines[:end])), result.stderr


@pytest.mark.timeout(400)
def test_a_one_block_job_logs_crop_progress_inside_the_block(before_the_block_ends) -> None:
    partial, stderr = before_the_block_ends
    assert partial, "no crop progress before the block finished:\n" + stderr[-3000:]


@pytest.mark.timeout(400)
def test_a_one_block_job_shows_a_rate_and_an_eta_inside_the_block(before_the_block_ends) -> None:
    partial, stderr = before_the_block_ends
    assert partial, "no crop progress before the block finished:\n" + stderr[-3000:]
    for line in partial:  # each line: "blocks 0/1, crops d/n in 1 running block, R MP/s, ETA Ts"
        rate, eta = RATE.search(line), ETA.search(line)
        assert rate and float(rate.group(1)) > 0, line
        assert eta and re.fullmatch(r"\d+s", eta.group(1)), line


def test_rate_and_eta_count_the_running_blocks_share_of_crops() -> None:
    progress = RunProgress(total_blocks=2, interval=0)
    assert progress.megapixels_per_second == 0 and progress.eta_seconds() is None
    progress.crops("a", 25, 100, 4_000_000)  # a quarter of a 4 MP block: 1 MP, 1/4 block
    progress.crops("b", 0, 100, 4_000_000)
    before = time.monotonic() - progress.start
    rate, eta = progress.megapixels_per_second, progress.eta_seconds()
    after = time.monotonic() - progress.start
    assert 1 / after <= rate <= 1 / before  # 1 MP in the time spent
    # 1/4 block done in the time spent, 1 3/4 to go: seven times as long
    assert eta is not None and 7 * before <= eta <= 7 * after
    assert progress.crop_counts() == (25, 200, 2)

    progress.forget("a")  # block "a" ended; a crop event of it arrives late
    progress.advance(4_000_000)
    progress.crops("a", 99, 100, 4_000_000)
    assert progress.crop_counts() == (0, 100, 1)
