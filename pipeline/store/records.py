"""Per-block completion records (SPEC 3.5): ``block_started`` when a task begins a block,
``block_done`` after its data is written. Each record is its own chunk file, written
atomically, so a torn block never has a done record."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import zarr

from pipeline.store.arrays import open_array
from pipeline.store.layout import BLOCK_DONE, BLOCK_STARTED


def _mark(path: str | os.PathLike, name: str, index: int) -> None:
    arr = open_array(path, name)
    row, col = divmod(index, arr.shape[1])
    arr[row, col] = 1


def mark_block_started(path: str | os.PathLike, index: int) -> None:
    """Record that a task started block ``index`` (row-major)."""
    _mark(path, BLOCK_STARTED, index)


def mark_block_done(path: str | os.PathLike, index: int) -> None:
    """Record block ``index`` (row-major) as done. Call only after its data is written:
    the record is its own chunk file, written atomically, so a torn block has none."""
    _mark(path, BLOCK_DONE, index)


def _records(path: str | os.PathLike, name: str) -> set[int]:
    marks = zarr.open_array(str(Path(path) / name), mode="r", zarr_format=2)[...]
    return {int(i) for i in np.flatnonzero(marks.reshape(-1))}


def done_blocks(path: str | os.PathLike) -> set[int]:
    """Indices (row-major) of the blocks with a completion record."""
    return _records(path, BLOCK_DONE)


def started_blocks(path: str | os.PathLike) -> set[int]:
    """Indices of the blocks a task has started (finished or not)."""
    return _records(path, BLOCK_STARTED)


def block_grid(path: str | os.PathLike) -> tuple[int, int] | None:
    """(rows, cols) of the store's block grid, or None for a store without records."""
    if not (Path(path) / BLOCK_DONE / ".zarray").is_file():
        return None
    shape = zarr.open_array(str(Path(path) / BLOCK_DONE), mode="r", zarr_format=2).shape
    return int(shape[0]), int(shape[1])
