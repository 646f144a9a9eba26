"""A regional job's index: one entry per scene (status, message, blocks, crops, seconds,
run fingerprint, footprint in EPSG:4326) in ``index.json`` and ``index.geojson``, rewritten
atomically as scenes end (regional/runner.py says how often), so cron or Airflow never
read a torn file."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from affine import Affine

from reattn_batch import store
from reattn_batch.grid.raster import raster_geobox

if TYPE_CHECKING:
    from odc.geo.geobox import GeoBox

    from reattn_batch.regional.spec import RegionalJob

#: What happened to a scene in this run (``pending``: not reached yet, index only).
STATUSES = ("done", "resumed", "skipped", "failed")
INDEX_JSON = "index.json"
INDEX_GEOJSON = "index.geojson"
#: Points along the footprint's outline before reprojection (edges curve in EPSG:4326).
FOOTPRINT_POINTS = 32


def footprint(geobox: GeoBox) -> dict[str, Any] | None:
    """The outline of ``geobox`` (a scene's or store's grid, grid/raster.py) as a GeoJSON
    geometry in EPSG:4326 (lon, lat), or None without a CRS; odc-geo densifies the edges
    before reprojection so they follow the true outline."""
    if geobox.crs is None:
        return None
    return json.loads(json.dumps(geobox.footprint("epsg:4326", npoints=FOOTPRINT_POINTS).json))


def _bbox(geom: dict[str, Any] | None) -> list[float] | None:
    """[west, south, east, north] of a GeoJSON geometry's coordinates (EPSG:4326)."""
    if geom is None:
        return None
    xs: list[float] = []
    ys: list[float] = []

    def walk(coords) -> None:
        if coords and isinstance(coords[0], int | float):
            xs.append(float(coords[0]))
            ys.append(float(coords[1]))
        else:
            for part in coords:
                walk(part)

    walk(geom.get("coordinates") or [])
    if not xs:  # an empty geometry
        return None
    return [min(xs), min(ys), max(xs), max(ys)]


def store_facts(path: Path) -> dict[str, Any]:
    """What an existing store says about itself (nothing when there is none)."""
    if not (path / ".zgroup").exists():
        return {}
    attrs = store.read_attrs(path)
    facts: dict[str, Any] = {
        "complete": bool(attrs.get("complete")),
        "run_fingerprint": attrs.get("run_fingerprint"),
    }
    with contextlib.suppress(Exception):  # an old or damaged store: no block counts
        rows, cols = store.block_grid(path)
        facts["blocks"] = rows * cols
        facts["blocks_done"] = len(store.done_blocks(path))
    shape = attrs.get("spatial:shape")
    transform = attrs.get("spatial:transform")
    if shape and transform:
        grid = raster_geobox(shape, Affine(*transform[:6]), attrs.get("proj:wkt2") or None)
        facts["footprint"] = footprint(grid)
    return facts


@dataclasses.dataclass
class SceneEntry:
    """One scene's line in the index and the summary."""

    uri: str
    store: str
    status: str = "pending"
    message: str | None = None
    blocks: int | None = None  # blocks in the store
    blocks_done: int | None = None  # blocks with a completion record after this run
    computed: int = 0  # blocks computed in this run
    crops: int = 0  # crops run in this run
    seconds: float = 0.0
    run_fingerprint: str | None = None
    complete: bool = False
    footprint: dict[str, Any] | None = None

    def _fields(self) -> dict[str, Any]:
        """The fields, shallow (the values are JSON types that nothing changes)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def record(self) -> dict[str, Any]:
        """For index.json and summary.json: everything but the geometry, plus its bbox."""
        out = self._fields()
        out["bbox"] = _bbox(out.pop("footprint"))
        return out

    def feature(self) -> dict[str, Any]:
        props = self._fields()
        geometry = props.pop("footprint")
        return {"type": "Feature", "geometry": geometry, "properties": props}


def write_json(path: Path, data: Any) -> None:
    """Write atomically: a reader (cron, Airflow) never sees a torn file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def counts(entries: list[SceneEntry]) -> dict[str, int]:
    counts = dict.fromkeys(STATUSES, 0)
    for entry in entries:
        counts[entry.status] = counts.get(entry.status, 0) + 1
    return counts


def write_index(job: RegionalJob, entries: list[SceneEntry]) -> Path:
    root = job.output_root
    head = {"job": job.name, "spec": str(job.path), "updated": now()}
    write_json(
        root / INDEX_JSON,
        {
            **head,
            "output_root": str(root),
            "counts": counts(entries),
            "scenes": [e.record() for e in entries],
        },
    )
    write_json(
        root / INDEX_GEOJSON,
        {"type": "FeatureCollection", **head, "features": [e.feature() for e in entries]},
    )
    return root / INDEX_JSON
