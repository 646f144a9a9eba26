"""The store's arrays: opened once per process, and the block writes of the tasks."""

from __future__ import annotations

import contextlib
import os
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import zarr

from reattn_batch.store.layout import CONFIDENCE, LABELS
from reattn_batch.workers.errors import StoreError

# Per-process cache of opened arrays: (resolved store path, array name) ->
# ((inode, mtime_ns) of the array's .zarray, array). The stamp notices a recreated store.
# Least recently used first, at most _MAX_ARRAYS: a regional job's driver and workers see
# thousands of stores, and each opened array keeps its metadata and store objects.
_ARRAYS: OrderedDict[tuple[str, str], tuple[tuple[int, int], zarr.Array]] = OrderedDict()
_MAX_ARRAYS = 64


def open_array(path: str | os.PathLike, name: str, mode: str = "r+") -> zarr.Array:
    root = Path(path).resolve()
    meta = root / name / ".zarray"
    try:
        st = meta.stat()
    except FileNotFoundError:
        if not (root / ".zgroup").exists():
            raise StoreError(
                f"{root} is not a label store (no .zgroup); create it first or check the path"
            ) from None
        raise KeyError(f"{root} has no '{name}' array") from None
    stamp = (st.st_ino, st.st_mtime_ns)
    key = (str(root), name)
    hit = _ARRAYS.get(key)
    if hit is not None and hit[0] == stamp and (mode == "r" or not hit[1].read_only):
        _ARRAYS.move_to_end(key)
        return hit[1]
    arr = zarr.open_array(store=str(root), path=name, mode=mode, zarr_format=2)
    _ARRAYS[key] = (stamp, arr)
    _ARRAYS.move_to_end(key)
    while len(_ARRAYS) > _MAX_ARRAYS:
        _ARRAYS.popitem(last=False)
    return arr


def forget_arrays(path: Path) -> None:
    key = str(path.resolve())
    for cache_key in [k for k in _ARRAYS if k[0] == key]:
        del _ARRAYS[cache_key]


def _check_region(arr: zarr.Array, row0: int, col0: int, h: int, w: int) -> None:
    height, width = arr.shape
    ch, cw = arr.chunks
    if row0 < 0 or col0 < 0 or row0 + h > height or col0 + w > width:
        raise ValueError(
            f"block rows {row0}:{row0 + h}, cols {col0}:{col0 + w} outside the store "
            f"({height} x {width})"
        )
    if row0 % ch or col0 % cw:
        raise ValueError(f"block origin ({row0}, {col0}) is not on the {ch} x {cw} chunk grid")
    if (h % ch and row0 + h != height) or (w % cw and col0 + w != width):
        raise ValueError(
            f"block ({row0}, {col0}) of {h} x {w} does not end on a chunk boundary or the "
            f"scene edge (chunks {ch} x {cw}, store {height} x {width})"
        )


def _fsync(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_chunks(array: Path, chunks: Iterable[tuple[int, int]]) -> None:
    """Make the chunk files ``array/<row>/<col>`` (CHUNK_KEYS) durable: fsync each file
    that exists (zarr skips or deletes a chunk equal to the fill value) and the folders
    holding them, so their names survive a crash too (POSIX: a rename is durable only once
    its folder is fsynced)."""
    folders = {array}
    for row, col in chunks:
        folder = array / str(row)
        with contextlib.suppress(FileNotFoundError):  # not written: equal to the fill value
            _fsync(folder / str(col))
        folders.add(folder)
    for folder in sorted(folders):
        if folder.is_dir():
            _fsync(folder, directory=True)


def write_block(
    path: str | os.PathLike,
    row0: int,
    col0: int,
    labels: np.ndarray,
    confidence: np.ndarray | None = None,
    *,
    durable: bool = False,
) -> None:
    """Write one native-pixel block into an existing store.

    row0, col0: the block's upper-left pixel; must lie on the chunk grid.
    labels: (h, w) uint8 class indices, 255 = nodata; h and w are multiples of the chunk
        edge unless the block ends at the scene edge.
    confidence: (h, w) uint8 (max prob x 254), required exactly when the store has a
        ``confidence`` array.

    durable: return only once every chunk file written is on disk (fsync of the files and
        their folders): a block's completion record may then be written.

    Safe to call concurrently from several processes for disjoint blocks: each block owns
    whole chunks, and every chunk file is written atomically (temp file + rename).
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.dtype != np.uint8:
        raise ValueError(f"labels must be a 2-D uint8 array, got {labels.dtype} {labels.shape}")
    h, w = labels.shape
    arr = open_array(path, LABELS)
    _check_region(arr, row0, col0, h, w)
    has_conf = (Path(path) / CONFIDENCE / ".zarray").exists()
    if confidence is not None:
        confidence = np.asarray(confidence)
        if not has_conf:
            raise ValueError(f"{path} has no confidence array; create it with with_confidence")
        if confidence.shape != labels.shape or confidence.dtype != np.uint8:
            raise ValueError(
                f"confidence must be uint8 of shape {labels.shape}, "
                f"got {confidence.dtype} {confidence.shape}"
            )
        open_array(path, CONFIDENCE)[row0 : row0 + h, col0 : col0 + w] = confidence
    elif has_conf:
        raise ValueError(f"{path} has a confidence array: pass the block's confidence too")
    arr[row0 : row0 + h, col0 : col0 + w] = labels
    if durable:
        ch, cw = arr.chunks
        chunks = [
            (r, c)
            for r in range(row0 // ch, -(-(row0 + h) // ch))
            for c in range(col0 // cw, -(-(col0 + w) // cw))
        ]
        for name in (LABELS, CONFIDENCE) if confidence is not None else (LABELS,):
            fsync_chunks(Path(path) / name, chunks)


def open_labels(path: str | os.PathLike) -> zarr.Array:
    """The store's ``labels`` array, (height, width) uint8, read-only."""
    return open_array(path, LABELS, mode="r")
