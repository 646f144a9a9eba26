"""A polygon export's request: the checks made before anything is written, and the area unit."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from reattn_batch.workers.errors import InputError

if TYPE_CHECKING:
    from reattn_batch.store import LabelStore

#: Output extension -> format; the extension of OUT picks it.
FORMATS: dict[str, str] = {".gpkg": "GPKG", ".fgb": "FlatGeobuf", ".parquet": "GeoParquet"}
CONNECTIVITIES: tuple[int, ...] = (4, 8)
DEFAULT_CONNECTIVITY = 4
#: Block edge in pixels (rounded down to a multiple of the store's chunk, at least one
#: chunk) when the store does not record the block size `run` used. A number of its own:
#: `run`'s default block size is "auto", chosen from the model's halo, which means
#: nothing to polygonizing.
DEFAULT_BLOCK = 2048


@dataclass(frozen=True)
class VectorRequest:
    """A checked polygon export of one store.

    classes: the label values to polygonize (indices into the store's class list).
    min_area: drop regions smaller than this, in CRS units squared (0: keep all).
    simplify: topology-preserving simplification tolerance in CRS units (0: none).
    block_size: block edge in pixels, a multiple of the store's chunk.
    """

    store: Path
    out: Path
    format: str
    classes: tuple[int, ...]
    class_names: tuple[str, ...]
    min_area: float
    simplify: float
    connectivity: int
    block_size: int
    overwrite: bool


@dataclass(frozen=True)
class VectorSummary:
    """What an export wrote: features, of which merged across blocks, and the blocks."""

    out: Path
    features: int
    merged: int
    blocks: int
    area_units: str


def plan_vector(
    store: LabelStore | str | os.PathLike,
    out: str | os.PathLike,
    *,
    classes: str | None = None,
    min_area: float = 0.0,
    simplify: float = 0.0,
    connectivity: int = DEFAULT_CONNECTIVITY,
    block_size: int | None = None,
    overwrite: bool = False,
) -> VectorRequest:
    """Check everything about a polygon export before anything is written (UserError, one
    line, on bad input). ``classes``: comma-separated class names of the store (default:
    every class but the background)."""
    from reattn_batch.outputs.files import check_export
    from reattn_batch.store import label_store

    out = Path(out)
    fmt = FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise InputError(
            f"vector={out}: unknown format {out.suffix or '(no extension)'!r}; "
            f"end the name in {', '.join(FORMATS)}"
        )
    if connectivity not in CONNECTIVITIES:
        raise InputError(f"connectivity={connectivity}: choose 4 or 8")
    for name, value in (("`min_area`", min_area), ("`simplify`", simplify)):
        if not math.isfinite(value) or value < 0:
            raise InputError(f"{name} {value}: must be a number >= 0 (CRS units)")
    ls = label_store(store)
    check_export(ls, out, overwrite, "`vector`")
    names = tuple(ls.class_names)
    background = (ls.attrs.get("classes") or {}).get("background_index", 0)
    if classes is None:
        chosen = tuple(c for c in range(len(names)) if c != background)
    else:
        wanted = [w.strip() for w in classes.split(",") if w.strip()]
        if not wanted:
            raise InputError("`classes` is empty; pass class names of the store, comma-separated")
        unknown = [w for w in wanted if w not in names]
        if unknown:
            raise InputError(
                f"classes={','.join(unknown)}: not in the store's classes "
                f"({', '.join(names)}); pick from those"
            )
        chosen = tuple(sorted({names.index(w) for w in wanted}))
    chunk = ls.chunk
    if block_size is None:
        recorded = ls.attrs.get("block_size")
        if isinstance(recorded, int) and recorded > 0 and recorded % chunk == 0:
            block_size = recorded
        else:
            block_size = chunk * max(1, DEFAULT_BLOCK // chunk)
    if block_size <= 0 or block_size % chunk:
        raise ValueError(f"block_size {block_size} must be a positive multiple of {chunk}")
    return VectorRequest(
        store=ls.path,
        out=out,
        format=fmt,
        classes=chosen,
        class_names=names,
        min_area=float(min_area),
        simplify=float(simplify),
        connectivity=connectivity,
        block_size=block_size,
        overwrite=overwrite,
    )


def area_units(crs_wkt: str | None) -> str:
    """The unit of ``area``: the CRS's axis unit squared (e.g. ``metre^2``)."""
    if crs_wkt is None:
        return "pixel^2 (the store has no CRS)"
    from pyproj import CRS

    axis = CRS.from_wkt(crs_wkt).axis_info
    unit = axis[0].unit_name if axis else "unknown"
    return f"{unit}^2"
