"""Progress of a run: a live display on a terminal, periodic log lines otherwise."""

from __future__ import annotations

import logging
import sys
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

log = logging.getLogger(__name__)


class RunProgress:
    """Blocks done / total, megapixels per second and ETA."""

    def __init__(self, total_blocks: int, done_blocks: int = 0, interval: float = 10.0) -> None:
        self.total = total_blocks
        self.done = done_blocks
        self.start_done = done_blocks
        self.pixels = 0
        self.start = time.monotonic()
        self.interval = interval
        self.last_log = self.start
        self.live = sys.stderr.isatty()
        self._progress: Progress | None = None

    def __enter__(self) -> RunProgress:
        if self.live:
            self._progress = Progress(
                TextColumn("blocks"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
            )
            self._progress.start()
            self._task = self._progress.add_task(
                "blocks", total=self.total, completed=self.done, rate=""
            )
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    @property
    def megapixels_per_second(self) -> float:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        return self.pixels / 1e6 / elapsed

    def eta_seconds(self) -> float | None:
        finished = self.done - self.start_done
        if finished == 0:
            return None
        per_block = (time.monotonic() - self.start) / finished
        return per_block * (self.total - self.done)

    def advance(self, pixels: int) -> None:
        self.done += 1
        self.pixels += pixels
        rate = f"{self.megapixels_per_second:.3g} MP/s"
        if self._progress is not None:
            self._progress.update(self._task, completed=self.done, rate=rate)
            return
        now = time.monotonic()
        if now - self.last_log >= self.interval or self.done == self.total:
            self.last_log = now
            eta = self.eta_seconds()
            log.info(
                "blocks %d/%d, %s, ETA %s",
                self.done, self.total, rate, "-" if eta is None else f"{eta:.0f}s",
            )  # fmt: skip
