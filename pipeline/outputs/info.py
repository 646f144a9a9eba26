"""`info`: per-class area statistics and the facts of a label store (SPEC 3.3).

Pixel counts come from ``outputs.counts`` (dask.array over the store's chunks, one
bincount per chunk, summed), hectares per class where the CRS is projected, percentages
of valid pixels.
"""

from __future__ import annotations

import os
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from reattn_batch import store
from reattn_batch.outputs.counts import class_counts
from reattn_batch.store import NODATA, LabelStore, label_store

# Hyperparameters shown in the human-readable `info` table (``--json`` has them all).
KEY_HYPERPARAMETERS = (
    "clip_model", "base", "patch_patch", "cls_row", "cls_col", "alpha", "rotations",
    "lambda_cls", "prob_thd", "crop", "stride", "dtype",
)  # fmt: skip


def number_text(value: float | None, digits: int = 2) -> str:
    """A figure as `info` shows it (thousands separators, fixed digits; "-" for none)."""
    return "-" if value is None else f"{value:,.{digits}f}"


def pixel_area(ls: LabelStore) -> tuple[float | None, str | None]:
    """(area of one pixel in square metres, None) or (None, why areas are unavailable)."""
    from rasterio.crs import CRS

    t = ls.transform
    area = abs(t.a * t.e - t.b * t.d)
    if ls.crs_wkt is None:
        return None, "the store has no CRS"
    try:
        crs = CRS.from_wkt(ls.crs_wkt)
    except Exception:
        return None, "the store's CRS could not be parsed"
    if not crs.is_projected:
        return None, "the CRS is not projected (degrees): pixel areas vary with latitude"
    try:
        unit, factor = crs.linear_units_factor
    except Exception:
        return None, "the CRS's linear unit is unknown"
    return area * factor * factor, None if unit in ("metre", "meter", "m") else f"units: {unit}"


def _software_version() -> str | None:
    try:
        return version("reattn-batch")
    except PackageNotFoundError:
        return None


def store_info(label: LabelStore | str | os.PathLike) -> dict[str, Any]:
    """A JSON-ready summary of a label store: classes with pixel counts, hectares and
    percent of the valid pixels, nodata, parameters, weights, progress and fingerprint."""
    from pyproj import CRS as ProjCRS
    from rasterio.crs import CRS

    ls = label_store(label)
    attrs = ls.attrs
    counts = class_counts(ls)
    n = len(ls.class_names)
    total = ls.height * ls.width
    nodata = int(counts[NODATA])
    valid = total - nodata
    m2, note = pixel_area(ls)
    classes_attr = attrs.get("classes") or {}
    synonyms = classes_attr.get("synonyms") or [[name] for name in ls.class_names]

    def hectares(pixels: int) -> float | None:
        return None if m2 is None else pixels * m2 / 10_000

    classes = []
    for c, name in enumerate(ls.class_names):
        pixels = int(counts[c])
        classes.append(
            {
                "index": c,
                "name": name,
                "synonyms": synonyms[c] if c < len(synonyms) else [name],
                "colour": list(ls.colormap[c][:3]),
                "pixels": pixels,
                "hectares": hectares(pixels),
                "percent": 100 * pixels / valid if valid else None,
            }
        )
    unexpected = {str(v): int(counts[v]) for v in range(n, NODATA) if counts[v]}

    crs: dict[str, Any] | None = None
    if ls.crs_wkt is not None:
        try:
            parsed = CRS.from_wkt(ls.crs_wkt)
            epsg = parsed.to_epsg()
            crs = {
                "name": ProjCRS.from_wkt(ls.crs_wkt).name,
                "epsg": f"EPSG:{epsg}" if epsg else None,
                "projected": bool(parsed.is_projected),
                "wkt": ls.crs_wkt,
            }
        except Exception:
            crs = {"name": None, "epsg": None, "projected": None, "wkt": ls.crs_wkt}

    progress: dict[str, Any] | None = None
    grid = store.block_grid(ls.path)
    if grid is not None:
        blocks_total = grid[0] * grid[1]
        blocks_done = len(store.done_blocks(ls.path))
        progress = {
            "blocks_done": blocks_done,
            "blocks_total": blocks_total,
            "percent": 100 * blocks_done / blocks_total if blocks_total else None,
            "block_size": attrs.get("block_size"),
            "grid": list(grid),
        }

    t = ls.transform
    return store.jsonable(
        {
            "store": str(ls.path),
            "software": attrs.get("software", "reattn-batch"),
            "software_version": attrs.get("software_version"),
            "reader_version": _software_version(),
            "run_fingerprint": attrs.get("run_fingerprint"),
            "complete": bool(attrs.get("complete", False)),
            "progress": progress,
            "scene": attrs.get("scene"),
            "shape": {"height": ls.height, "width": ls.width},
            "chunk": ls.chunk,
            "crs": crs,
            "transform": [t.a, t.b, t.c, t.d, t.e, t.f],
            "pixel_size": [abs(t.a), abs(t.e)],
            "pixel_area_m2": m2,
            "area_available": m2 is not None,
            "area_note": note,
            "pixels": {"total": total, "valid": valid, "nodata": nodata},
            "valid_hectares": hectares(valid),
            "nodata_hectares": hectares(nodata),
            "classes": classes,
            "unexpected_values": unexpected,
            "background_index": classes_attr.get("background_index"),
            "method": attrs.get("method"),
            "upsampler": attrs.get("upsampler"),
            "hyperparameters": attrs.get("hyperparameters") or {},
            "weights": attrs.get("weights"),
            "random_weights": bool(attrs.get("random_weights", False)),
            "warning": attrs.get("warning"),
            "native_gsd": attrs.get("native_gsd"),
            "model_gsd": attrs.get("model_gsd"),
            "crops_run": attrs.get("crops_run"),
            "megapixels_per_second": attrs.get("megapixels_per_second"),
        }
    )
