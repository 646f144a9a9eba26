"""What block and merge tasks share: global region ids, part file names, pixel polygons in
the store's CRS, and the output columns."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

#: A global region id is ``block index << BLOCK_SHIFT | region id inside the block``.
BLOCK_SHIFT = 32


def part_file(parts: Path, kind: str, index: int) -> Path:
    """A part file in the folder ``parts``: ``block`` (a block's final features),
    ``border`` (its pieces on internal edges, in pixels) or ``merged`` (a merge task's
    features), of block or merge task ``index``."""
    return parts / f"{kind}-{index:08d}.parquet"


def to_crs(geoms: np.ndarray, transform: tuple[float, ...], multi: bool) -> np.ndarray:
    """Pixel-space polygons -> the store's CRS, collinear vertices removed (exact in pixels),
    promoted to MultiPolygons when ``multi``."""
    import shapely

    a, b, c, d, e, f = transform
    geoms = shapely.simplify(geoms, 0.0)  # drops only exactly collinear vertices

    def affine(xy: np.ndarray) -> np.ndarray:
        x, y = xy[:, 0], xy[:, 1]
        return np.column_stack((a * x + b * y + c, d * x + e * y + f))

    geoms = shapely.transform(geoms, affine)
    if multi:
        single = shapely.get_type_id(geoms) == shapely.GeometryType.POLYGON
        geoms[single] = [shapely.multipolygons([g]) for g in geoms[single]]
    return geoms


def feature_table(
    classes: np.ndarray, areas: np.ndarray, geoms: np.ndarray, names: tuple[str, ...]
) -> Any:
    """The output columns as an Arrow table (geometry as WKB)."""
    import pyarrow as pa
    import shapely

    return pa.table(
        {
            "class_index": pa.array(classes, pa.uint8()),
            "class_name": pa.array([names[c] for c in classes], pa.string()),
            "area": pa.array(areas, pa.float64()),
            "geometry": pa.array(shapely.to_wkb(geoms) if len(geoms) else [], pa.binary()),
        }
    )
