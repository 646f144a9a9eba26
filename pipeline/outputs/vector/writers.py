"""Streaming the part files into GeoPackage / FlatGeobuf (pyogrio) or GeoParquet (pyarrow)."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from reattn_batch.outputs.vector.request import VectorRequest
from reattn_batch.workers.errors import InputError

LAYER = "polygons"


def metadata(request: VectorRequest, attrs: dict[str, Any], units: str) -> dict[str, str]:
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
        raise InputError(f"cannot write {out} ({exc.strerror or exc})") from None
    finally:
        tmp.unlink(missing_ok=True)
