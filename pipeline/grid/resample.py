"""Bilinear resampling between the native and model grids, as a function of GLOBAL
pixel indices (SPEC 3.1).

A target pixel's value depends only on its global index and the source values, never
on the window it is computed in: the taps (two source indices and a weight per target
index) come from global coordinates, and the arithmetic is elementwise. That is what
GDAL's windowed ``out_shape`` reads cannot give (they shift sub-pixel alignment with
the window), and what bitwise-identical stitching needs.

Convention: the half-pixel mapping of OpenCV and torch ``align_corners=False``:
``src = (dst + 0.5) * n_src / n_dst - 0.5``, clamped at 0, taps ``floor(src)`` and the
next index (clamped to the last), weight ``src - floor(src)``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import Tensor

from reattn_batch.workers.sliding import Box


@dataclasses.dataclass(frozen=True)
class Axis:
    """One axis of the native <-> model mapping: ``native`` and ``model`` sizes in px."""

    native: int
    model: int

    def taps(
        self, start: int, stop: int, *, from_model: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Bilinear taps for target indices start..stop-1.

        from_model: targets are native pixels sampled from the model grid (logits back);
        otherwise targets are model pixels sampled from the native grid (image in).
        Returns (i0, i1, w): int64 source indices and float32 weights of i1, each (stop-start,).
        """
        n_src, n_dst = (self.model, self.native) if from_model else (self.native, self.model)
        dst = np.arange(start, stop, dtype=np.float64)
        src = np.maximum((dst + 0.5) * (n_src / n_dst) - 0.5, 0.0)
        i0 = np.floor(src).astype(np.int64)
        i0 = np.minimum(i0, n_src - 1)
        i1 = np.minimum(i0 + 1, n_src - 1)
        w = (src - i0).astype(np.float32)
        w[i0 == n_src - 1] = 0.0
        return i0, i1, w

    def sources_for_targets(self, start: int, stop: int, *, from_model: bool) -> tuple[int, int]:
        """The source index range [lo, hi) that targets start..stop-1 read.

        The taps are monotone in the target index, so only the two end targets are
        evaluated: O(1) however long the range.
        """
        i0, _, _ = self.taps(start, start + 1, from_model=from_model)
        _, i1, _ = self.taps(stop - 1, stop, from_model=from_model)
        return int(i0[0]), int(i1[0]) + 1


def _along(
    values: Tensor, dim: int, taps: tuple[np.ndarray, np.ndarray, np.ndarray], offset: int
) -> Tensor:
    i0, i1, w = taps
    device = values.device
    a = values.index_select(dim, torch.from_numpy(i0 - offset).to(device))
    b = values.index_select(dim, torch.from_numpy(i1 - offset).to(device))
    shape = [1] * values.dim()
    shape[dim] = -1
    weight = torch.from_numpy(w).to(device, values.dtype).view(shape)
    return a * (1 - weight) + b * weight


@dataclasses.dataclass(frozen=True)
class Resampler:
    """Resampling in one direction between the native and the model grid.

    ``from_model``: targets are native pixels sampled from the model grid (logits back);
    otherwise targets are model pixels sampled from the native grid (image in).
    Sources are windows whose [0, 0] is global source pixel ``origin``; targets are
    global rows/cols [start, stop).
    """

    rows: Axis
    cols: Axis
    from_model: bool

    def sources(self, target_rows: tuple[int, int], target_cols: tuple[int, int]) -> Box:
        """The source window that the target rows/cols read."""
        r0, r1 = self.rows.sources_for_targets(*target_rows, from_model=self.from_model)
        c0, c1 = self.cols.sources_for_targets(*target_cols, from_model=self.from_model)
        return Box(r0, c0, r1, c1)

    def bilinear(
        self,
        values: Tensor,
        *,
        origin: tuple[int, int],
        target_rows: tuple[int, int],
        target_cols: tuple[int, int],
    ) -> Tensor:
        """(C, h, w) source ``values`` -> (C, rows, cols). Rows first, then cols."""
        fm = self.from_model
        out = _along(values, 1, self.rows.taps(*target_rows, from_model=fm), origin[0])
        return _along(out, 2, self.cols.taps(*target_cols, from_model=fm), origin[1])

    def nearest(
        self,
        values: np.ndarray,
        *,
        origin: tuple[int, int],
        target_rows: tuple[int, int],
        target_cols: tuple[int, int],
    ) -> np.ndarray:
        """Nearest of the two bilinear taps, for masks: (h, w) -> (rows, cols)."""
        picks = []
        for axis, (start, stop), offset in (
            (self.rows, target_rows, origin[0]),
            (self.cols, target_cols, origin[1]),
        ):
            i0, i1, w = axis.taps(start, stop, from_model=self.from_model)
            picks.append(np.where(w < 0.5, i0, i1) - offset)
        return values[np.ix_(picks[0], picks[1])]
