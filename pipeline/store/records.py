"""Per-block completion records (SPEC 3.5), suited to parallel file systems.

Layout: two uint8 Zarr arrays of shape (block rows, block cols), ``block_done`` (1 once the
block's data is durable) and ``block_started`` (1 once its task was submitted), chunked
:data:`RECORD_CHUNK` x :data:`RECORD_CHUNK` blocks: a 100k-block scene has 2 small record
files per array, not one file per block.

Who writes them: only the driver (:class:`RunRecords`), from the results the block tasks
return, so no two processes ever write one record chunk. A task returns only after its
block's data chunks are durable (``write_block(..., durable=True)`` fsyncs every chunk file
it wrote and their folders), and the driver writes the block's record only after the task
returned: **a record is never visible before its block's data is durable**. Each record
chunk is written atomically by zarr's LocalStore (temporary file + rename, zarr >= 3.1.3),
then fsynced with its folder. A driver killed between a block's end and its record's flush
loses only that record: the block is recomputed on ``--resume``, never trusted torn.

Reading is tolerant: a record chunk that is empty, truncated or not decodable (a crash
on a file system without atomic rename, bit rot) counts as "no block of this chunk done",
with one warning, so ``--resume`` recomputes those blocks instead of failing.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np
import zarr

from reattn_batch.store.arrays import fsync_chunks, open_array
from reattn_batch.store.layout import BLOCK_DONE, BLOCK_STARTED

log = logging.getLogger(__name__)

#: Blocks per record chunk edge: 256 x 256 = 65 536 blocks per record file.
RECORD_CHUNK = 256


def _read(path: str | os.PathLike, name: str) -> np.ndarray:
    """The record array as (rows, cols) bool; an unreadable chunk reads as all False."""
    arr = zarr.open_array(str(Path(path) / name), mode="r", zarr_format=2)
    rows, cols = arr.shape
    ch, cw = arr.chunks
    marks = np.zeros((rows, cols), dtype=bool)
    for r0 in range(0, rows, ch):
        for c0 in range(0, cols, cw):
            window = (slice(r0, min(r0 + ch, rows)), slice(c0, min(c0 + cw, cols)))
            try:
                marks[window] = arr[window] == 1
            except Exception as exc:  # noqa: BLE001 - any undecodable chunk means "not done"
                reason = str(exc).splitlines()[0] if str(exc) else ""
                log.warning(
                    "%s: the %s record chunk at blocks (%d, %d) is unreadable (%s: %s); its "
                    "blocks count as not done and are recomputed",
                    path, name, r0, c0, type(exc).__name__, reason,
                )  # fmt: skip
    return marks


def _indices(marks: np.ndarray) -> set[int]:
    return {int(i) for i in np.flatnonzero(marks.reshape(-1))}


def done_blocks(path: str | os.PathLike) -> set[int]:
    """Indices (row-major) of the blocks with a completion record."""
    return _indices(_read(path, BLOCK_DONE))


def started_blocks(path: str | os.PathLike) -> set[int]:
    """Indices of the blocks a run submitted (finished or not)."""
    return _indices(_read(path, BLOCK_STARTED))


def block_grid(path: str | os.PathLike) -> tuple[int, int] | None:
    """(rows, cols) of the store's block grid, or None for a store without records."""
    if not (Path(path) / BLOCK_DONE / ".zarray").is_file():
        return None
    shape = zarr.open_array(str(Path(path) / BLOCK_DONE), mode="r", zarr_format=2).shape
    return int(shape[0]), int(shape[1])


class RunRecords:
    """The driver's view of a store's records: marks kept in memory (1 byte per block, so
    O(blocks)), written back one record chunk at a time, at most every ``interval`` s
    (and on :meth:`flush`). Only the driver writes records; call :meth:`done` only after
    the block's task returned (its data is then durable)."""

    def __init__(self, path: str | os.PathLike, interval: float = 1.0) -> None:
        self.path = str(path)
        self.interval = interval
        names = (BLOCK_STARTED, BLOCK_DONE)
        self._marks = {name: _read(path, name) for name in names}
        self._chunks = {name: open_array(path, name).chunks for name in names}
        self._dirty: dict[str, set[tuple[int, int]]] = {name: set() for name in names}
        self._last = time.monotonic()

    def _set(self, name: str, index: int) -> None:
        marks = self._marks[name]
        row, col = divmod(index, marks.shape[1])
        marks[row, col] = True
        ch, cw = self._chunks[name]
        self._dirty[name].add((row // ch, col // cw))

    def started(self, index: int) -> None:
        self._set(BLOCK_STARTED, index)

    def done(self, index: int) -> None:
        self._set(BLOCK_DONE, index)
        if time.monotonic() - self._last >= self.interval:
            self.flush()

    def done_count(self) -> int:
        """How many blocks have a completion record (written or still to flush)."""
        return int(np.count_nonzero(self._marks[BLOCK_DONE]))

    def flush(self) -> None:
        """Write every changed record chunk (started before done) and fsync it."""
        for name in (BLOCK_STARTED, BLOCK_DONE):
            if not self._dirty[name]:
                continue
            arr = open_array(self.path, name)
            ch, cw = self._chunks[name]
            dirty = sorted(self._dirty[name])
            for cr, cc in dirty:
                window = (slice(cr * ch, (cr + 1) * ch), slice(cc * cw, (cc + 1) * cw))
                arr[window] = self._marks[name][window].astype(np.uint8)
            fsync_chunks(Path(self.path) / name, dirty)
            self._dirty[name].clear()
        self._last = time.monotonic()


def mark_block_done(path: str | os.PathLike, index: int) -> None:
    """Record block ``index`` (row-major) as done, at once (one writer only). Call only
    after its data is durable."""
    records = RunRecords(path)
    records.done(index)
    records.flush()


def mark_block_started(path: str | os.PathLike, index: int) -> None:
    """Record that block ``index`` was submitted, at once (one writer only)."""
    records = RunRecords(path)
    records.started(index)
    records.flush()
