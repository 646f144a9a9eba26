"""Reading a finished (or partial) label store for outputs: :class:`LabelStore` holds its
attributes, labels array, class names, colours and grid (a GeoBox), checked once.

:func:`open_store` opens one (a StoreError, one line, for any path that is not a readable
label store: missing, a file, another Zarr, damaged metadata). :func:`open_for_reading`
is the one door of the commands that read a store (info, export, view): each opens its
store there once and passes the :class:`LabelStore` on (every output function takes one,
or a path it opens with :func:`label_store`). :func:`warn_unfinished` is what they say,
once their checks have passed, about a store whose run has not finished or that another
run is writing now (``export`` refuses that one, and keeps runs out while it copies).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from affine import Affine
from odc.geo.geobox import GeoBox

from reattn_batch.grid.raster import OnGeobox, raster_geobox
from reattn_batch.store.arrays import open_labels
from reattn_batch.store.attrs import DAMAGED, damaged, read_attrs
from reattn_batch.store.layout import GRID_MAPPING, LABELS, NODATA
from reattn_batch.store.lock import share_store, store_is_busy
from reattn_batch.store.palette import class_palette
from reattn_batch.store.records import block_grid, done_blocks
from reattn_batch.workers.errors import StoreError

log = logging.getLogger("reattn_batch")


@dataclass(frozen=True)
class LabelStore(OnGeobox):
    """What the exports need from a label store, read and checked once."""

    path: Path
    attrs: dict[str, Any]
    labels: zarr.Array
    class_names: list[str]
    colormap: dict[int, tuple[int, int, int, int]]  # class index (and 255) -> RGBA
    #: The labels' grid (grid/raster.py): their shape, the store's ``spatial:transform``
    #: (identity without one) and its CRS (the CF grid mapping's WKT, verbatim).
    geobox: GeoBox

    @property
    def chunk(self) -> int:
        return int(self.labels.chunks[0])


def open_store(path: str | os.PathLike) -> LabelStore:
    """Open a reattn-batch label store read-only; a UserError (one line) if it is not one."""
    root = Path(path)
    if not root.exists():
        raise StoreError(
            f"{root}: no such label store; pass the .zarr folder `reattn-batch run` wrote"
        )
    if not root.is_dir() or not (root / ".zgroup").is_file():
        raise StoreError(
            f"{root} is not a label store (not a Zarr format-2 group); "
            "pass the .zarr folder `reattn-batch run` wrote"
        )
    attrs = read_attrs(root)  # a StoreError if damaged
    names = attrs.get("class_names")
    if not isinstance(names, list) or not names or not (root / LABELS / ".zarray").is_file():
        raise StoreError(
            f"{root} is a Zarr group but not a reattn-batch label store "
            "(no 'labels' array or 'class_names' attribute)"
        )
    try:
        labels = open_labels(root)
    except DAMAGED as exc:
        raise damaged(root, f"{LABELS}/.zarray", exc) from None
    if labels.ndim != 2 or labels.dtype != np.uint8:
        raise StoreError(
            f"{root}: 'labels' is {labels.dtype} {labels.shape}, not a 2-D uint8 label map; "
            "the store is damaged or not a reattn-batch store"
        )
    try:
        colormap = _colormap(labels, attrs, len(names))
        geobox = raster_geobox(labels.shape, _transform(attrs), _crs_wkt(root, attrs))
    except DAMAGED as exc:
        raise damaged(root, "georeferencing or colour map", exc) from None
    return LabelStore(
        path=root,
        attrs=attrs,
        labels=labels,
        class_names=[str(n) for n in names],
        colormap=colormap,
        geobox=geobox,
    )


def label_store(store: LabelStore | str | os.PathLike) -> LabelStore:
    """``store`` itself when it is an open :class:`LabelStore`, else the store at that path
    opened (:func:`open_store`): what every output function takes."""
    return store if isinstance(store, LabelStore) else open_store(store)


@contextlib.contextmanager
def open_for_reading(path: str | os.PathLike, *, refuse_busy: bool = False) -> Iterator[LabelStore]:
    """Open a label store for a command that reads it (info, export, view), for the length
    of the ``with``: every such command opens its store here once, before it checks or
    writes anything else, and passes the :class:`LabelStore` on. Once its own checks have
    passed, the command calls :func:`warn_unfinished`.

    refuse_busy: for a command that copies the store (export): refuse (a StoreError, one
        line) a store that another run is writing now (it holds the store's lock,
        store/lock.py), and hold a shared lock on the store's lock file until the ``with``
        ends, so that a run starting meanwhile is refused: the copy is never a mix of
        blocks from before and during a run. Commands that only look (info, view) read a
        store being written with :func:`warn_unfinished`'s warning instead.
    """
    # the lock before the store is read (a path that is no folder: open_store says what)
    lock = share_store(path) if refuse_busy and Path(path).is_dir() else None
    with lock or contextlib.nullcontext():
        yield open_store(path)


def warn_unfinished(ls: LabelStore) -> None:
    """One WARNING if ``ls`` is unfinished (no ``complete`` attribute: its run was
    interrupted, failed or is still going), naming how many blocks are done and whether a
    run is writing it now: a command reads it as it is, and pixels of unwritten blocks read
    as 255 (nodata)."""
    if store_is_busy(ls.path):
        log.warning(
            "%s is being written by another run now (%s): what is read may change, and "
            "pixels of unwritten blocks read as %d (nodata)",
            ls.path,
            _progress_text(ls.path),
            NODATA,
        )
    elif not ls.attrs.get("complete"):
        log.warning(
            "%s is unfinished (%s): pixels of unwritten blocks read as %d (nodata); "
            "resume its run to finish it",
            ls.path,
            _progress_text(ls.path),
            NODATA,
        )


def _progress_text(root: Path) -> str:
    """ "3 of 6 blocks done" from the completion records ("no completion records" without)."""
    try:
        grid = block_grid(root)
    except DAMAGED:
        return "its completion records are unreadable"
    if grid is None:
        return "no completion records"
    return f"{len(done_blocks(root))} of {grid[0] * grid[1]} blocks done"


def _colormap(labels: zarr.Array, attrs: dict[str, Any], n: int) -> dict[int, tuple]:
    """The labels' ``colormap`` attribute as {index: RGBA}; the default palette if absent."""
    raw = labels.attrs.get("colormap")
    out: dict[int, tuple[int, int, int, int]] = {}
    if isinstance(raw, dict):
        for key, value in raw.items():
            try:
                index = int(key)
                rgba = tuple(int(v) for v in value)
            except (TypeError, ValueError):
                continue
            if 0 <= index <= 255 and len(rgba) in (3, 4):
                out[index] = (*rgba[:3], rgba[3] if len(rgba) == 4 else 255)
    if any(c not in out for c in range(n)):
        background = (attrs.get("classes") or {}).get("background_index", 0)
        palette = class_palette(n, background)
        for c in range(n):
            out.setdefault(c, (*palette[c], 255))
    out.setdefault(NODATA, (0, 0, 0, 0))
    return out


def _transform(attrs: dict[str, Any]) -> Affine:
    coeffs = attrs.get("spatial:transform")
    if not isinstance(coeffs, list) or len(coeffs) != 6:
        return Affine.identity()
    return Affine(*(float(v) for v in coeffs))


def _crs_wkt(root: Path, attrs: dict[str, Any]) -> str | None:
    """The scene's CRS: the verbatim WKT of the CF grid mapping, else ``proj:wkt2``."""
    if (root / GRID_MAPPING / ".zarray").is_file():
        sr = zarr.open_array(str(root / GRID_MAPPING), mode="r", zarr_format=2)
        wkt = sr.attrs.get("crs_wkt") or sr.attrs.get("spatial_ref")
        if wkt:
            return str(wkt)
    wkt = attrs.get("proj:wkt2")
    return str(wkt) if wkt else None
