"""The per-block task: connected regions of the selected classes, polygonized in pixel
coordinates; final regions written in the CRS, border pieces kept for merging."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reattn_batch.outputs.vector.features import BLOCK_SHIFT, feature_table, part_file, to_crs

_NO_REGION = -1  # edge id of a pixel that is not in a selected class


@dataclass(frozen=True)
class BlockJob:
    """One block's task: its window, the selection, and where its parts go."""

    store: str
    index: int
    row0: int
    col0: int
    height: int
    width: int
    scene_height: int
    scene_width: int
    classes: tuple[int, ...]
    class_names: tuple[str, ...]
    connectivity: int
    simplify_px: float  # tolerance in pixels (0: none)
    min_area: float  # CRS units squared
    pixel_area: float  # CRS units squared
    transform: tuple[float, ...]  # (a, b, c, d, e, f): pixel (col, row) -> CRS (x, y)
    multi: bool  # write MultiPolygons (8-connectivity) rather than Polygons
    parts: str


@dataclass(frozen=True)
class BlockResult:
    """What the driver needs from a block: the region ids along its edges (-1: no selected
    region) and the size of each border piece it wrote."""

    index: int
    top: np.ndarray  # (width,) int64 global region ids of the first row
    bottom: np.ndarray  # (width,) last row
    left: np.ndarray  # (height,) first column
    right: np.ndarray  # (height,) last column
    border_ids: np.ndarray  # (n,) int64 ids of the pieces written to the border part
    border_bytes: np.ndarray  # (n,) int64 their WKB sizes
    border_classes: np.ndarray  # (n,) uint8 their classes
    features: int  # final features written by the block


def components(
    labels: np.ndarray, values: list[int], connectivity: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Connected regions of each value of ``values`` in ``labels`` (h, w) uint8.

    Returns (regions (h, w) int32: 0 outside the values, else the region id 1..n;
    region_class (n + 1,) uint8: the value of each region; region_pixels (n + 1,) int64).
    """
    import cv2

    regions = np.zeros(labels.shape, np.int32)
    region_class = [0]
    region_pixels = [0]
    for value in values:
        mask = (labels == value).view(np.uint8)
        n, lab, stats, _ = cv2.connectedComponentsWithStats(
            mask, connectivity=connectivity, ltype=cv2.CV_32S
        )
        if n <= 1:
            continue
        inside = lab > 0
        regions[inside] = lab[inside] + (len(region_class) - 1)
        region_class += [value] * (n - 1)
        region_pixels += stats[1:, cv2.CC_STAT_AREA].tolist()
    return regions, np.asarray(region_class, np.uint8), np.asarray(region_pixels, np.int64)


def _polygons(regions: np.ndarray, row0: int, col0: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids (m,) int64, polygons (m,)) of the 4-connected pieces of ``regions`` (> 0), in
    global pixel coordinates (x = column, y = row of pixel corners)."""
    import rasterio.features
    import shapely.geometry
    from affine import Affine
    from rasterio.errors import NotGeoreferencedWarning

    ids: list[int] = []
    geoms: list[Any] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # pixel space on purpose
        for geom, value in rasterio.features.shapes(
            regions, mask=regions > 0, connectivity=4, transform=Affine.translation(col0, row0)
        ):
            ids.append(int(value))
            geoms.append(shapely.geometry.shape(geom))
    return np.asarray(ids, np.int64), np.asarray(geoms, dtype=object)


def _group(ids: np.ndarray, geoms: np.ndarray, n: int) -> np.ndarray:
    """(n + 1,) geometries by region id: one piece as is, several (8-connectivity: pieces
    that meet only at corners) as a MultiPolygon."""
    import shapely

    out = np.full(n + 1, None, dtype=object)
    if not len(ids):
        return out
    order = np.argsort(ids, kind="stable")
    ids, geoms = ids[order], geoms[order]
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    ends = np.r_[starts[1:], len(ids)]
    for s, e in zip(starts, ends, strict=True):
        out[ids[s]] = geoms[s] if e - s == 1 else shapely.MultiPolygon(list(geoms[s:e]))
    return out


def polygonize_block(job: BlockJob) -> BlockResult:
    """Polygonize one block; write its final features and its border pieces (see module)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import shapely

    from reattn_batch.store import open_labels

    r0, c0, h, w = job.row0, job.col0, job.height, job.width
    labels = np.asarray(open_labels(job.store)[r0 : r0 + h, c0 : c0 + w])
    present = np.flatnonzero(np.bincount(labels.ravel(), minlength=256)).tolist()
    # Simplifying needs the block's whole coverage, so that shared edges move together.
    values = present if job.simplify_px > 0 else [v for v in present if v in job.classes]
    regions, region_class, region_pixels = components(labels, values, job.connectivity)
    n = len(region_class) - 1
    ids, pieces = _polygons(regions, r0, c0)
    if job.simplify_px > 0 and len(pieces):
        pieces = shapely.coverage_simplify(
            shapely.segmentize(pieces, 1.0), job.simplify_px, simplify_boundary=False
        )
    geoms = _group(ids, pieces, n)

    selected = np.isin(region_class, job.classes)
    selected[0] = False
    base = job.index << BLOCK_SHIFT

    def edge(line: np.ndarray) -> np.ndarray:
        return np.where(selected[line], base + line.astype(np.int64), _NO_REGION)

    sides = {
        "top": regions[0, :],
        "bottom": regions[-1, :],
        "left": regions[:, 0],
        "right": regions[:, -1],
    }
    internal = {
        "top": r0 > 0,
        "bottom": r0 + h < job.scene_height,
        "left": c0 > 0,
        "right": c0 + w < job.scene_width,
    }
    on_border = np.zeros(n + 1, bool)
    for side, line in sides.items():
        if internal[side]:
            on_border[line] = True
    border = np.flatnonzero(on_border & selected)
    final = np.flatnonzero(~on_border & selected)
    final = final[region_pixels[final] * job.pixel_area >= job.min_area]

    parts = Path(job.parts)
    table = feature_table(
        region_class[final],
        region_pixels[final] * job.pixel_area,
        to_crs(geoms[final], job.transform, job.multi),
        job.class_names,
    )
    pq.write_table(table, part_file(parts, "block", job.index))
    wkb = shapely.to_wkb(geoms[border]) if len(border) else np.array([], dtype=object)
    pq.write_table(
        pa.table(
            {
                "id": pa.array(base + border, pa.int64()),
                "class_index": pa.array(region_class[border], pa.uint8()),
                "pixels": pa.array(region_pixels[border], pa.int64()),
                "geometry": pa.array(list(wkb), pa.binary()),
            }
        ),
        part_file(parts, "border", job.index),
    )
    return BlockResult(
        index=job.index,
        top=edge(sides["top"]),
        bottom=edge(sides["bottom"]),
        left=edge(sides["left"]),
        right=edge(sides["right"]),
        border_ids=base + border.astype(np.int64),
        border_bytes=np.asarray([len(b) for b in wkb], np.int64),
        border_classes=region_class[border],
        features=len(final),
    )
