"""Merge tasks: regions split over blocks, packed into batches within a memory budget, each
batch's pieces unioned into one feature per region."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reattn_batch.outputs.vector.features import BLOCK_SHIFT, feature_table, part_file, to_crs

#: WKB bytes of border pieces one merge task unions at most (unless one region is larger).
MERGE_BUDGET_BYTES = 32 * 2**20


@dataclass(frozen=True)
class MergeJob:
    """A batch of regions to assemble from border pieces."""

    index: int
    groups: tuple[np.ndarray, ...]
    class_names: tuple[str, ...]
    min_area: float
    pixel_area: float
    transform: tuple[float, ...]
    multi: bool
    parts: str


def pack_groups(
    groups: list[np.ndarray], sizes: dict[int, int], budget: int = MERGE_BUDGET_BYTES
) -> list[list[np.ndarray]]:
    """Consecutive batches of groups whose pieces' WKB bytes stay within ``budget``."""
    batches: list[list[np.ndarray]] = []
    current: list[np.ndarray] = []
    used = 0
    for group in groups:
        size = sum(sizes[int(i)] for i in group)
        if current and used + size > budget:
            batches.append(current)
            current, used = [], 0
        current.append(group)
        used += size
    if current:
        batches.append(current)
    return batches


def merge_groups(job: MergeJob) -> tuple[int, int]:
    """Union each group's pieces into one feature; write them. Returns (written, merged)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    import shapely

    parts = Path(job.parts)
    ids = np.concatenate(job.groups)
    pieces: dict[int, tuple[int, int, bytes]] = {}
    for block in np.unique(ids >> BLOCK_SHIFT).tolist():
        table = pq.read_table(part_file(parts, "border", block))
        table = table.filter(pc.is_in(table["id"], value_set=_pa_int64(ids)))
        for i, c, p, g in zip(
            table["id"].to_pylist(),
            table["class_index"].to_pylist(),
            table["pixels"].to_pylist(),
            table["geometry"].to_pylist(),
            strict=True,
        ):
            pieces[i] = (c, p, g)
    classes, areas, geoms = [], [], []
    merged = 0
    for group in job.groups:
        members = [pieces[int(i)] for i in group]
        area = sum(m[1] for m in members) * job.pixel_area
        if area < job.min_area:
            continue
        shapes = shapely.from_wkb([m[2] for m in members])
        geom = shapes[0] if len(shapes) == 1 else shapely.union_all(shapes)
        merged += len(shapes) > 1
        classes.append(members[0][0])
        areas.append(area)
        geoms.append(geom)
    geoms_crs = to_crs(np.asarray(geoms, dtype=object), job.transform, job.multi)
    table = feature_table(
        np.asarray(classes, np.uint8), np.asarray(areas, np.float64), geoms_crs, job.class_names
    )
    pq.write_table(table, part_file(parts, "merged", job.index))
    return len(classes), merged


def _pa_int64(values: np.ndarray) -> Any:
    import pyarrow as pa

    return pa.array(values, pa.int64())
