"""Counting the labels of a store: the pixels of every label value, at full resolution
(the figures of `info` and the shares in the quicklook's legend)."""

from __future__ import annotations

import numpy as np

from reattn_batch.store import LabelStore


def class_counts(ls: LabelStore) -> np.ndarray:
    """(256,) int64 pixel count of every label value: a bincount per chunk, summed."""
    import dask.array as da

    labels = da.from_zarr(ls.labels)
    per_chunk = labels.map_blocks(
        lambda block: np.bincount(block.ravel(), minlength=256).reshape(1, 1, 256),
        new_axis=2,
        chunks=(1, 1, 256),
        dtype=np.int64,
    )
    return np.asarray(per_chunk.sum(axis=(0, 1)).compute(), dtype=np.int64)
