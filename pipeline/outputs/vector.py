"""Class polygons of a label store (SPEC 3.3 "Export", issue 12): one feature per connected
region of a class, seamless across blocks, computed block by block on a Dask cluster.

How it stays exact and bounded (no task and not the driver ever holds the whole raster):

1. One task per block (``polygonize_block``) reads only its own window of ``labels``,
   labels the connected regions of each class inside it (OpenCV, 4- or 8-connectivity),
   and polygonizes them (GDAL through ``rasterio.features.shapes``) in *pixel* coordinates,
   where every vertex is an integer and unions are exact. Regions that do not touch an
   internal block edge are final: the task writes them, in the store's CRS, to a part
   file. Regions that touch one are written, still in pixels, to a "border" part file,
   and the task returns the region ids along its four edges (a few KB).
2. The driver pairs the ids across every internal edge (same class, 4- or 8-neighbours;
   8 also across block corners) and takes the connected components of that graph
   (networkx): each component is one region of the whole raster, split over blocks.
3. Merge tasks (``merge_groups``) each take a batch of components, packed so that the
   polygons one task unions stay under ``MERGE_BUDGET_BYTES`` (a single component larger
   than that gets a task of its own: it is one output feature, and no smaller), read just
   those pieces, union them, and write the merged features.
4. The driver streams the part files, one at a time, into GeoPackage / FlatGeobuf (GDAL
   via ``pyogrio.write_arrow``) or GeoParquet (``pyarrow``), and deletes them.

The result equals polygonizing the whole raster at once: the same regions, the same
outlines (redundant collinear vertices where pieces met are removed; tested against
``rasterio.features.shapes`` on the whole raster). ``area`` is the region's pixel count
times the pixel area, in the CRS's units squared (named in the file's metadata).

``--simplify`` keeps neighbours meeting: each block's full coverage (every value, nodata
and background included) is simplified with GEOS's coverage simplifier, which moves each
shared edge once for both sides, with the block's own outline held fixed, so pieces still
meet exactly at block edges and are then merged as above.

Part files live in a temporary folder beside the output, which the workers must be able to
write (as they write the store in ``run``); it is removed at the end.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from reattn_batch.settings import DEFAULT_BLOCK_SIZE, ClusterSettings
from reattn_batch.workers.errors import UserError

log = logging.getLogger(__name__)

#: Output extension -> format; the extension of OUT picks it.
FORMATS: dict[str, str] = {".gpkg": "GPKG", ".fgb": "FlatGeobuf", ".parquet": "GeoParquet"}
CONNECTIVITIES: tuple[int, ...] = (4, 8)
DEFAULT_CONNECTIVITY = 4
#: Block edge in pixels when the store does not record the block size `run` used.
DEFAULT_BLOCK = DEFAULT_BLOCK_SIZE
#: WKB bytes of border pieces one merge task unions at most (unless one region is larger).
MERGE_BUDGET_BYTES = 32 * 2**20
LAYER = "polygons"
_NO_REGION = -1  # edge id of a pixel that is not in a selected class
_BLOCK_SHIFT = 32  # global region id = block index << 32 | region id inside the block


# ----------------------------------------------------------------------------- request


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
    store_path: str | os.PathLike,
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
    from reattn_batch.outputs.files import check_output
    from reattn_batch.store import open_store

    out = Path(out)
    fmt = FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise UserError(
            f"--vector {out}: unknown format {out.suffix or '(no extension)'!r}; "
            f"end the name in {', '.join(FORMATS)}"
        )
    if connectivity not in CONNECTIVITIES:
        raise UserError(f"--connectivity {connectivity}: choose 4 or 8")
    for name, value in (("--min-area", min_area), ("--simplify", simplify)):
        if not math.isfinite(value) or value < 0:
            raise UserError(f"{name} {value}: must be a number >= 0 (CRS units)")
    ls = open_store(store_path)
    if ls.path.absolute() == out.absolute() or ls.path.absolute() in out.absolute().parents:
        raise UserError(f"--vector {out} is inside the store; pass a path outside it")
    check_output(out, overwrite, "--vector")
    names = tuple(ls.class_names)
    background = (ls.attrs.get("classes") or {}).get("background_index", 0)
    if classes is None:
        chosen = tuple(c for c in range(len(names)) if c != background)
    else:
        wanted = [w.strip() for w in classes.split(",") if w.strip()]
        if not wanted:
            raise UserError("--classes is empty; pass class names of the store, comma-separated")
        unknown = [w for w in wanted if w not in names]
        if unknown:
            raise UserError(
                f"--classes {','.join(unknown)}: not in the store's classes "
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


# ----------------------------------------------------------------------------- per block


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


def _to_crs(geoms: np.ndarray, transform: tuple[float, ...], multi: bool) -> np.ndarray:
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


def _feature_table(
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
    base = job.index << _BLOCK_SHIFT

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
    table = _feature_table(
        region_class[final],
        region_pixels[final] * job.pixel_area,
        _to_crs(geoms[final], job.transform, job.multi),
        job.class_names,
    )
    pq.write_table(table, parts / f"block-{job.index:08d}.parquet")
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
        parts / f"border-{job.index:08d}.parquet",
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


# ----------------------------------------------------------------------------- merging


def _pairs(a: np.ndarray, b: np.ndarray, diagonal: bool) -> np.ndarray:
    """(k, 2) id pairs of neighbouring pixels across one edge: a[i] - b[i], and with
    ``diagonal`` also a[i] - b[i +- 1]; pixels off the selection (id -1) are left out."""
    out = [np.column_stack((a, b))]
    if diagonal:
        out += [np.column_stack((a[:-1], b[1:])), np.column_stack((a[1:], b[:-1]))]
    pairs = np.concatenate(out)
    return pairs[(pairs[:, 0] >= 0) & (pairs[:, 1] >= 0)]


def seam_pairs(
    results: dict[int, BlockResult], grid: tuple[int, int], connectivity: int
) -> np.ndarray:
    """(k, 2) ids of border pieces that are neighbours across an internal block edge
    (candidates: same-class filtering happens in ``regions_across_blocks``)."""
    rows, cols = grid
    diagonal = connectivity == 8
    found: list[np.ndarray] = [np.empty((0, 2), np.int64)]
    for br in range(rows):
        for bc in range(cols):
            here = results[br * cols + bc]
            if bc + 1 < cols:
                found.append(_pairs(here.right, results[br * cols + bc + 1].left, diagonal))
            if br + 1 < rows:
                found.append(_pairs(here.bottom, results[(br + 1) * cols + bc].top, diagonal))
            if diagonal and br + 1 < rows and bc + 1 < cols:
                below_right = results[(br + 1) * cols + bc + 1]
                right = results[br * cols + bc + 1]
                below = results[(br + 1) * cols + bc]
                corners = np.array(
                    [[here.bottom[-1], below_right.top[0]], [right.bottom[0], below.top[-1]]]
                )
                found.append(corners[(corners >= 0).all(axis=1)])
    return np.unique(np.concatenate(found), axis=0)


def regions_across_blocks(
    results: dict[int, BlockResult],
    grid: tuple[int, int],
    connectivity: int,
    classes_of: dict[int, int],
) -> list[np.ndarray]:
    """The regions of the whole raster made of border pieces: lists of piece ids, each
    sorted, ordered by their first id. A piece with no partner is a region of its own."""
    import networkx as nx

    graph = nx.Graph()
    graph.add_nodes_from(int(i) for r in results.values() for i in r.border_ids)
    for u, v in seam_pairs(results, grid, connectivity).tolist():
        if classes_of[u] == classes_of[v]:
            graph.add_edge(u, v)
    groups = [np.sort(np.fromiter(c, np.int64)) for c in nx.connected_components(graph)]
    groups.sort(key=lambda g: int(g[0]))
    return groups


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
    for block in np.unique(ids >> _BLOCK_SHIFT).tolist():
        table = pq.read_table(parts / f"border-{block:08d}.parquet")
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
    geoms_crs = _to_crs(np.asarray(geoms, dtype=object), job.transform, job.multi)
    table = _feature_table(
        np.asarray(classes, np.uint8), np.asarray(areas, np.float64), geoms_crs, job.class_names
    )
    pq.write_table(table, parts / f"merged-{job.index:08d}.parquet")
    return len(classes), merged


def _pa_int64(values: np.ndarray) -> Any:
    import pyarrow as pa

    return pa.array(values, pa.int64())


# ----------------------------------------------------------------------------- writing


def _metadata(request: VectorRequest, attrs: dict[str, Any], units: str) -> dict[str, str]:
    """What the file says about itself (GPKG/FGB layer metadata, GeoParquet schema)."""
    return {
        "area_units": units,
        "area": "region area = pixel count x pixel area, before any simplification",
        "classes": json.dumps({str(c): request.class_names[c] for c in request.classes}),
        "connectivity": str(request.connectivity),
        "min_area": repr(request.min_area),
        "simplify_tolerance": repr(request.simplify),
        "source_store": str(request.store.absolute()),
        "run_fingerprint": str(attrs.get("run_fingerprint", "")),
        "software": f"reattn-batch {attrs.get('software_version', '')}".strip(),
        "random_weights": str(bool(attrs.get("random_weights", False))).lower(),
    }


def _schema(geoarrow: bool) -> Any:
    import pyarrow as pa

    meta = {b"ARROW:extension:name": b"geoarrow.wkb"} if geoarrow else None
    return pa.schema(
        [
            pa.field("class_index", pa.uint8()),
            pa.field("class_name", pa.string()),
            pa.field("area", pa.float64()),
            pa.field("geometry", pa.binary(), metadata=meta),
        ]
    )


def _batches(paths: list[Path], schema: Any) -> Iterator[Any]:
    """The part files' features, one file in memory at a time (an empty batch at least)."""
    import pyarrow.parquet as pq

    yield from _empty(schema)
    for path in paths:
        table = pq.read_table(path).cast(schema)
        yield from table.to_batches()


def _empty(schema: Any) -> Iterator[Any]:
    import pyarrow as pa

    yield pa.RecordBatch.from_pylist([], schema=schema)


def write_features(
    paths: list[Path], out: Path, fmt: str, crs_wkt: str | None, multi: bool, meta: dict
) -> None:
    """Stream the part files into ``out`` (written beside it, then renamed into place)."""
    import pyarrow as pa

    kind = "MultiPolygon" if multi else "Polygon"
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = out.absolute().parent / f".{out.stem}.tmp-{tag}{out.suffix}"
    try:
        if fmt == "GeoParquet":
            import pyarrow.parquet as pq
            from pyproj import CRS

            schema = _schema(geoarrow=False)
            geo = {
                "version": "1.1.0",
                "primary_column": "geometry",
                "columns": {
                    "geometry": {
                        "encoding": "WKB",
                        "geometry_types": [kind],
                        "crs": CRS.from_wkt(crs_wkt).to_json_dict() if crs_wkt else None,
                    }
                },
            }
            schema = schema.with_metadata(
                {"geo": json.dumps(geo), "reattn_batch": json.dumps(meta)}
            )
            with pq.ParquetWriter(tmp, schema) as writer:
                for batch in _batches(paths, schema):
                    writer.write_batch(batch)
        else:
            import pyogrio

            schema = _schema(geoarrow=True)
            reader = pa.RecordBatchReader.from_batches(schema, _batches(paths, schema))
            pyogrio.write_arrow(
                reader,
                str(tmp),
                layer=LAYER,
                driver=fmt,
                geometry_name="geometry",
                geometry_type=kind,
                crs=crs_wkt,
                layer_metadata=meta,
            )
        os.replace(tmp, out)
    except OSError as exc:
        raise UserError(f"cannot write {out} ({exc.strerror or exc})") from None
    finally:
        tmp.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- the job


def export_vector(request: VectorRequest, client: Any) -> VectorSummary:
    """Polygonize the store on ``client``'s cluster and write ``request.out``."""
    from distributed import as_completed
    from reattn_batch.store import open_store

    ls = open_store(request.store)
    t = ls.transform
    transform = (t.a, t.b, t.c, t.d, t.e, t.f)
    pixel_area = abs(t.a * t.e - t.b * t.d)
    multi = request.connectivity == 8
    units = area_units(ls.crs_wkt)
    step = request.block_size
    grid = (math.ceil(ls.height / step), math.ceil(ls.width / step))
    parts = request.out.absolute().parent / f".{request.out.name}.parts-{uuid.uuid4().hex[:8]}"
    parts.mkdir()
    try:
        jobs = [
            BlockJob(
                store=str(ls.path.absolute()),
                index=br * grid[1] + bc,
                row0=br * step,
                col0=bc * step,
                height=min(step, ls.height - br * step),
                width=min(step, ls.width - bc * step),
                scene_height=ls.height,
                scene_width=ls.width,
                classes=request.classes,
                class_names=request.class_names,
                connectivity=request.connectivity,
                simplify_px=request.simplify / math.sqrt(pixel_area),
                min_area=request.min_area,
                pixel_area=pixel_area,
                transform=transform,
                multi=multi,
                parts=str(parts),
            )
            for br in range(grid[0])
            for bc in range(grid[1])
        ]
        tag = uuid.uuid4().hex[:8]
        futures = client.map(
            polygonize_block, jobs, key=[f"polygonize-{tag}-{j.index}" for j in jobs]
        )
        results: dict[int, BlockResult] = {}
        for future in as_completed(futures):
            result = future.result()
            results[result.index] = result
            future.release()
        sizes: dict[int, int] = {}
        classes_of: dict[int, int] = {}
        for result in results.values():
            ids = result.border_ids.tolist()
            sizes.update(zip(ids, result.border_bytes.tolist(), strict=True))
            classes_of.update(zip(ids, result.border_classes.tolist(), strict=True))
        groups = regions_across_blocks(results, grid, request.connectivity, classes_of)
        merge_jobs = [
            MergeJob(
                index=k,
                groups=tuple(batch),
                class_names=request.class_names,
                min_area=request.min_area,
                pixel_area=pixel_area,
                transform=transform,
                multi=multi,
                parts=str(parts),
            )
            for k, batch in enumerate(pack_groups(groups, sizes))
        ]
        merged_futures = client.map(
            merge_groups, merge_jobs, key=[f"merge-{tag}-{j.index}" for j in merge_jobs]
        )
        written = sum(r.features for r in results.values())
        merged = 0
        for future in as_completed(merged_futures):
            n, m = future.result()
            written += n
            merged += m
        paths = [parts / f"block-{j.index:08d}.parquet" for j in jobs]
        paths += [parts / f"merged-{j.index:08d}.parquet" for j in merge_jobs]
        meta = _metadata(request, ls.attrs, units)
        write_features(paths, request.out, request.format, ls.crs_wkt, multi, meta)
    finally:
        shutil.rmtree(parts, ignore_errors=True)
    return VectorSummary(
        out=request.out, features=written, merged=merged, blocks=len(jobs), area_units=units
    )


def vector_cluster(settings: ClusterSettings) -> ClusterSettings:
    """The cluster for polygonizing: ``settings`` as given, except that an embedded
    LocalCluster gets one worker per core by default (the block tasks are single-threaded
    OpenCV/GEOS work, not one model using every core)."""
    if settings.scheduler or settings.scheduler_file or settings.workers is not None:
        return settings
    return ClusterSettings(**{**settings.model_dump(), "workers": os.cpu_count() or 1})


def run_vector(request: VectorRequest, settings: ClusterSettings) -> VectorSummary:
    """``export_vector`` on the cluster of ``settings`` (``reattn_batch.run.cluster.connect``),
    see :func:`vector_cluster`."""
    from reattn_batch.run.cluster import connect

    with connect(vector_cluster(settings)) as (client, _info):
        return export_vector(request, client)
