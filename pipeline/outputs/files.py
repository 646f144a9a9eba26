"""What every output file shares: refusing to overwrite, atomic replacement through a
temporary sibling, and streaming a store in windows aligned to its chunks."""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from reattn_batch.paths import overlap
from reattn_batch.workers.errors import StoreError

if TYPE_CHECKING:
    from reattn_batch.store import LabelStore

TILE = 512  # COG tile edge
WINDOW = 2048  # edge of the windows read from the store (a multiple of TILE)


def check_output(path: str | os.PathLike, overwrite: bool, what: str) -> Path:
    """A writable output path; an existing one only with ``overwrite`` (UserError otherwise)."""
    out = Path(path)
    if out.is_dir():
        raise StoreError(f"{what} {out} is a folder; pass a file path")
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise StoreError(f"{what} {out} already exists; pass overwrite=True to replace it")
    parent = out.absolute().parent
    if not parent.is_dir():
        raise StoreError(f"{what} {out}: the folder {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise StoreError(f"{what} {out}: the folder {parent} is not writable")
    return out


def check_export(ls: LabelStore, path: str | os.PathLike, overwrite: bool, what: str) -> Path:
    """An export's output path: not one of its inputs (:func:`refuse_inputs`), and new
    unless ``overwrite`` (:func:`check_output`)."""
    refuse_inputs(ls, path, what)
    return check_output(path, overwrite, what)


def refuse_inputs(ls: LabelStore, path: str | os.PathLike, what: str) -> None:
    """Refuse (one line) an output path where writing would damage an input of the
    export, ``overwrite`` or not: the store itself or a path inside it, and the local
    input scene the store records (or a path inside it: a Zarr scene)."""
    from reattn_batch.scene.uri import is_remote

    if overlap(path, ls.path) in ("is", "lies inside"):
        raise StoreError(f"{what} {path} is inside the store; pass a path outside it")
    scene = ls.attrs.get("scene")
    local = isinstance(scene, str) and scene and not is_remote(scene)
    if local and overlap(path, scene) in ("is", "lies inside"):
        raise StoreError(f"{what} {path} is the store's input scene {scene}; pass another path")


def temp_sibling(out: Path, suffix: str) -> Path:
    return out.absolute().parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}"


def windows(height: int, width: int, step: int) -> Iterator[tuple[int, int, int, int]]:
    """(row0, col0, h, w) of the step x step windows covering the array, row-major."""
    for r0 in range(0, height, step):
        for c0 in range(0, width, step):
            yield r0, c0, min(step, height - r0), min(step, width - c0)


def window_step(chunk: int, window: int | None = None) -> int:
    """A window edge aligned to both the COG tiles and the store's chunks, about WINDOW."""
    unit = math.lcm(TILE, chunk)
    return unit * max(1, (window or WINDOW) // unit)
