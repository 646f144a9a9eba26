"""Progress of a run: a live display on a terminal, periodic log lines otherwise.

Blocks are counted as they finish; inside the running blocks, crops are counted as the
block tasks report them (a Dask event topic, see ``blocks/task.py: CropProgress``), so a
one-block job shows progress long before its block is done. The rate (megapixels per
second) and the ETA count the running blocks too, each by the share of its crops done: a
block of P pixels with d of its n crops done counts P * d / n pixels and d / n of a block.
Log lines come at most every ``$REATTN_BATCH_PROGRESS_INTERVAL`` seconds (default 10).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Hashable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from reattn_batch.workers.environment import EnvironmentSettings

log = logging.getLogger(__name__)

# Ended blocks remembered to ignore their late crop events: far more than end in the few
# seconds an event can lag (a run keeps two tasks per worker thread in flight).
_ENDED_KEPT = 4096


def progress_interval() -> float:
    """Seconds between progress log lines: $REATTN_BATCH_PROGRESS_INTERVAL, default 10."""
    return EnvironmentSettings.from_env("progress_interval").progress_interval


class RunProgress:
    """Blocks done / total, crops done in the running blocks, megapixels per second, ETA."""

    def __init__(
        self,
        total_blocks: int,
        done_blocks: int = 0,
        interval: float | None = None,
        scenes: int | None = None,
    ) -> None:
        self.total = total_blocks
        self.done = done_blocks
        self.start_done = done_blocks
        self.scenes = scenes  # a regional job's scene count (None: one scene, not shown)
        self.scenes_opened = self.scenes_skipped = self.scenes_done = self.scenes_failed = 0
        self.pixels = 0
        self.start = time.monotonic()
        self.interval = progress_interval() if interval is None else interval
        self.last_log = self.start
        self.live = sys.stderr.isatty()
        self._progress: Progress | None = None
        # running block -> (crops done, crops, native pixels)
        self._crops: dict[Hashable, tuple[int, int, int]] = {}
        # the blocks that ended last: a crop event of theirs arriving late is ignored
        self._ended: OrderedDict[Hashable, None] = OrderedDict()
        self._lock = threading.Lock()

    def __enter__(self) -> RunProgress:
        if self.live:
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TextColumn("{task.fields[eta]}"),
                console=Console(stderr=True),
            )
            self._progress.start()
            self._task = self._progress.add_task(
                "blocks", total=self.total, completed=self.done, rate="", eta=""
            )
            self._crop_task = self._progress.add_task(
                "crops in running blocks", total=None, completed=0, rate="", eta="", visible=False
            )
            if self.scenes is not None:
                self._scene_task = self._progress.add_task(
                    "scenes", total=self.scenes, completed=0, rate="", eta=""
                )
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def _running(self) -> tuple[float, float]:
        """(blocks, native pixels) done inside the running blocks, each block counted by
        the share of its crops done."""
        with self._lock:
            values = list(self._crops.values())
        shares = [(done / of if of else 0.0, pixels) for done, of, pixels in values]
        return sum(s for s, _ in shares), sum(s * p for s, p in shares)

    @property
    def megapixels_per_second(self) -> float:
        """Native megapixels done per second since the start: finished blocks' pixels and
        the running blocks' share (see the module's docstring)."""
        elapsed = max(time.monotonic() - self.start, 1e-9)
        return (self.pixels + self._running()[1]) / 1e6 / elapsed

    def add_scene(self, blocks: int, done: int) -> None:
        """A scene of ``blocks`` blocks, ``done`` of them finished before, is opened."""
        with self._lock:
            self.scenes_opened += 1
            self.total += blocks
            self.done += done
            self.start_done += done

    def remove_blocks(self, blocks: int) -> None:
        """``blocks`` of an opened scene will not run (the scene failed)."""
        with self._lock:
            self.total -= max(blocks, 0)

    def forget(self, block: Hashable) -> None:
        """Block ``block`` ended (done or not): its crop counts are dropped, and crop
        events of it that arrive later are ignored."""
        with self._lock:
            self._crops.pop(block, None)
            self._ended[block] = None
            if len(self._ended) > _ENDED_KEPT:
                self._ended.popitem(last=False)

    def scene_done(self, failed: bool = False, opened: bool = True) -> None:
        """A scene ended (all its blocks done, or ``failed``); ``opened``: it was opened
        (else: skipped, or failed before its blocks). Any thread."""
        with self._lock:
            self.scenes_done += 1
            self.scenes_failed += failed
            self.scenes_skipped += not opened
            last = self.scenes is not None and self.scenes_done == self.scenes
        self.tick(force=last)

    def scene_skipped(self, failed: bool = False) -> None:
        """A scene ended without being opened (skipped, or failed before its blocks)."""
        self.scene_done(failed, opened=False)

    def expected_blocks(self) -> float:
        """Blocks of the run: those of the opened scenes, and for a job's scenes not yet
        opened as many as the opened ones have on average."""
        if not self.scenes or not self.scenes_opened:
            return float(self.total)
        unopened = max(self.scenes - self.scenes_opened - self.scenes_skipped, 0)
        return self.total + unopened * self.total / self.scenes_opened

    def eta_seconds(self) -> float | None:
        """Seconds left at the pace so far, in blocks done (running ones by their share of
        crops done) per second; None before any work is done."""
        running = self._running()[0]
        finished = self.done - self.start_done + running
        if finished <= 0:
            return None
        per_block = (time.monotonic() - self.start) / finished
        return per_block * max(self.expected_blocks() - self.done - running, 0.0)

    def crops(self, block: Hashable, done: int, of: int, pixels: int) -> None:
        """Running block ``block`` (``pixels`` native pixels) reports ``done`` of its ``of``
        crops (any thread)."""
        with self._lock:
            if block not in self._ended:
                self._crops[block] = (done, of, pixels)

    def crop_counts(self) -> tuple[int, int, int]:
        """(crops done, crops, blocks) over the running blocks that reported."""
        with self._lock:
            values = list(self._crops.values())
        return sum(v[0] for v in values), sum(v[1] for v in values), len(values)

    def advance(self, pixels: int, block: Hashable | None = None) -> None:
        """Block ``block`` finished with ``pixels`` native pixels."""
        if block is not None:
            self.forget(block)
        self.done += 1
        self.pixels += pixels
        self.tick(force=self.done == self.total and self.scenes is None)

    def tick(self, force: bool = False) -> None:
        """Refresh the display; a log line when ``interval`` has passed (or ``force``)."""
        rate = f"{self.megapixels_per_second:.3g} MP/s"
        eta = self.eta_seconds()
        eta_text = "ETA -" if eta is None else f"ETA {eta:.0f}s"
        crops_done, crops, running = self.crop_counts()
        if self._progress is not None:
            self._progress.update(
                self._task, total=self.total, completed=self.done, rate=rate, eta=eta_text
            )
            if self.scenes is not None:
                self._progress.update(self._scene_task, completed=self.scenes_done)
            self._progress.update(
                self._crop_task, completed=crops_done, total=crops or None, visible=running > 0
            )
            return
        now = time.monotonic()
        if not force and now - self.last_log < self.interval:
            return
        self.last_log = now
        inside = (
            f", crops {crops_done}/{crops} in {running} running block{'s' * (running != 1)}"
            if running
            else ""
        )
        scenes = (
            f"scenes {self.scenes_done}/{self.scenes}"
            + (f" ({self.scenes_failed} failed)" if self.scenes_failed else "")
            + ", "
            if self.scenes is not None
            else ""
        )
        log.info("%sblocks %d/%d%s, %s, %s", scenes, self.done, self.total, inside, rate, eta_text)
