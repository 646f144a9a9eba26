"""Mode decimation of a label store: the one rule every reduced view of the labels uses
(the quicklook, the viewer's overview). Each cell of the reduced grid takes the most common
label of its source pixels; nodata counts only where a cell has no valid pixel (GDAL's
``mode``); ties go to the smaller class index."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from reattn_batch.outputs.files import WINDOW, window_step, windows
from reattn_batch.store import NODATA, LabelStore


def cell_starts(n: int, m: int) -> np.ndarray:
    """First source index of each of m output cells over n source pixels (m + 1 entries)."""
    # source pixel i falls in cell floor(i * m / n); cell j starts at ceil(j * n / m).
    return np.array([-(-j * n // m) for j in range(m + 1)], dtype=np.int64)


def decimate_mode(ls: LabelStore, out_h: int, out_w: int) -> np.ndarray:
    """The store's labels reduced to (out_h, out_w) uint8 by the most common value of each
    cell (:func:`mode_cells`), read in windows of whole cells, so memory stays bounded for
    any scene."""
    return mode_cells(ls.labels, out_h, out_w, chunk=ls.chunk)


def halve_mode(labels: np.ndarray) -> np.ndarray:
    """(h, w) uint8 -> (ceil(h/2), ceil(w/2)): the mode of each 2 x 2 cell (a lone row or
    column at an odd edge is a cell of its own), by :func:`mode_cells` (its cell of source
    pixel i, floor(i * ceil(n/2) / n), is i // 2 for every i < n)."""
    h, w = labels.shape
    return mode_cells(labels, -(-h // 2), -(-w // 2))


def mode_cells(labels: Any, out_h: int, out_w: int, chunk: int | None = None) -> np.ndarray:
    """A 2-D uint8 label array (numpy, or a Zarr array read by slices) reduced to
    (out_h, out_w) by the most common value of each cell.

    Cells are the source pixels i with floor(i * out / n) equal; nodata counts only where a
    cell has no valid pixel (GDAL's ``mode``); ties go to the smaller class index. Read in
    windows of whole cells (``chunk``: align full-resolution windows to it).
    """
    height, width = labels.shape
    if (out_h, out_w) == (height, width):
        out = np.empty((height, width), np.uint8)
        for r0, c0, h, w in windows(height, width, window_step(chunk or WINDOW, WINDOW)):
            block = np.asarray(labels[r0 : r0 + h, c0 : c0 + w])
            out[r0 : r0 + h, c0 : c0 + w] = block
        return out
    rows, cols = cell_starts(height, out_h), cell_starts(width, out_w)
    row_of = np.repeat(np.arange(out_h), np.diff(rows))
    col_of = np.repeat(np.arange(out_w), np.diff(cols))
    n_values = 256
    # Cells per window: about WINDOW^2 source pixels, at most 2^22 count bins.
    per_side = max(1, int(math.sqrt((1 << 22) / n_values)))
    step_r = max(1, min(int(WINDOW * out_h / height), per_side))
    step_c = max(1, min(int(WINDOW * out_w / width), per_side))
    out = np.empty((out_h, out_w), np.uint8)
    for i0 in range(0, out_h, step_r):
        i1 = min(out_h, i0 + step_r)
        r0, r1 = int(rows[i0]), int(rows[i1])
        for j0 in range(0, out_w, step_c):
            j1 = min(out_w, j0 + step_c)
            c0, c1 = int(cols[j0]), int(cols[j1])
            block = np.asarray(labels[r0:r1, c0:c1])
            local = (row_of[r0:r1, None] - i0) * (j1 - j0) + (col_of[None, c0:c1] - j0)
            n_cells = (i1 - i0) * (j1 - j0)
            counts = np.bincount(
                (local * n_values + block).ravel(), minlength=n_cells * n_values
            ).reshape(n_cells, n_values)
            valid = counts[:, :NODATA].sum(axis=1) > 0
            counts[valid, NODATA] = 0  # nodata wins only in a cell without valid pixels
            out[i0:i1, j0:j1] = counts.argmax(axis=1).astype(np.uint8).reshape(i1 - i0, j1 - j0)
    return out
