"""Outputs for people (SPEC 3.3, "Export"): a Cloud-Optimised GeoTIFF, a PNG quicklook with a
legend, and per-class area statistics of a label store.

Everything here streams the store window by window, so a scene of any size is exported in
bounded memory:

- ``export_cog``: labels -> a tiled GeoTIFF (windowed writes) -> ``mode`` (or ``nearest``)
  overviews -> GDAL's COG driver, which rewrites it in COG layout (IFDs first, overviews
  before the full-resolution tiles). The class colours become the GDAL colour table, 255 is
  nodata, the CRS and transform are the store's own.
- ``export_quicklook``: a block-wise mode decimation (nodata ignored unless a cell has no
  valid pixel, as GDAL's ``mode`` does) to at most ``max_size`` pixels on the long side,
  coloured with the store's palette, with a legend to the right.
- ``store_info``: pixel counts (``np.bincount`` per window), hectares per class where the
  CRS is projected, percentages of the valid pixels, parameters, progress, fingerprint.
"""

from __future__ import annotations

import json
import math
import os
import uuid
import warnings
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from affine import Affine

from pipeline import store
from workers.errors import UserError

NODATA = store.NODATA
TILE = 512
WINDOW = 2048  # edge of the windows read from the store (a multiple of TILE)
NODATA_QUICKLOOK = (224, 224, 224)  # light grey: nodata / not yet written
OVERVIEW_RESAMPLING = ("mode", "nearest")
COMPRESSIONS = ("deflate", "zstd")

# Hyperparameters shown in the human-readable `info` table (``--json`` has them all).
KEY_HYPERPARAMETERS = (
    "clip_model", "base", "patch_patch", "cls_row", "cls_col", "alpha", "rotations",
    "lambda_cls", "prob_thd", "crop", "stride", "dtype",
)  # fmt: skip


# ----------------------------------------------------------------------------- the store


@dataclass(frozen=True)
class LabelStore:
    """What the exports need from a label store, read and checked once."""

    path: Path
    attrs: dict[str, Any]
    labels: zarr.Array
    class_names: list[str]
    colormap: dict[int, tuple[int, int, int, int]]  # class index (and 255) -> RGBA
    transform: Affine
    crs_wkt: str | None

    @property
    def height(self) -> int:
        return int(self.labels.shape[0])

    @property
    def width(self) -> int:
        return int(self.labels.shape[1])

    @property
    def chunk(self) -> int:
        return int(self.labels.chunks[0])


def open_store(path: str | os.PathLike) -> LabelStore:
    """Open a reattn-batch label store read-only; a UserError (one line) if it is not one."""
    root = Path(path)
    if not root.exists():
        raise UserError(
            f"{root}: no such label store; pass the .zarr folder `reattn-batch run` wrote"
        )
    if not root.is_dir() or not (root / ".zgroup").is_file():
        raise UserError(
            f"{root} is not a label store (not a Zarr format-2 group); "
            "pass the .zarr folder `reattn-batch run` wrote"
        )
    attrs = store.read_attrs(root)
    names = attrs.get("class_names")
    if not isinstance(names, list) or not names or not (root / store.LABELS / ".zarray").is_file():
        raise UserError(
            f"{root} is a Zarr group but not a reattn-batch label store "
            "(no 'labels' array or 'class_names' attribute)"
        )
    labels = store.open_labels(root)
    if labels.ndim != 2 or labels.dtype != np.uint8:
        raise UserError(
            f"{root}: 'labels' is {labels.dtype} {labels.shape}, not a 2-D uint8 label map; "
            "the store is damaged or not a reattn-batch store"
        )
    return LabelStore(
        path=root,
        attrs=attrs,
        labels=labels,
        class_names=[str(n) for n in names],
        colormap=_colormap(labels, attrs, len(names)),
        transform=_transform(attrs),
        crs_wkt=_crs_wkt(root, attrs),
    )


def _colormap(labels: zarr.Array, attrs: dict[str, Any], n: int) -> dict[int, tuple]:
    """The labels' ``colormap`` attribute as {index: RGBA}; the default palette if absent."""
    raw = labels.attrs.get("colormap")
    out: dict[int, tuple[int, int, int, int]] = {}
    if isinstance(raw, dict):
        for key, value in raw.items():
            try:
                index = int(key)
                rgba = tuple(int(v) for v in value)
            except (TypeError, ValueError):
                continue
            if 0 <= index <= 255 and len(rgba) in (3, 4):
                out[index] = (*rgba[:3], rgba[3] if len(rgba) == 4 else 255)
    if any(c not in out for c in range(n)):
        background = (attrs.get("classes") or {}).get("background_index", 0)
        palette = store.class_palette(n, background)
        for c in range(n):
            out.setdefault(c, (*palette[c], 255))
    out.setdefault(NODATA, (0, 0, 0, 0))
    return out


def _transform(attrs: dict[str, Any]) -> Affine:
    coeffs = attrs.get("spatial:transform")
    if not isinstance(coeffs, list) or len(coeffs) != 6:
        return Affine.identity()
    return Affine(*(float(v) for v in coeffs))


def _crs_wkt(root: Path, attrs: dict[str, Any]) -> str | None:
    """The scene's CRS: the verbatim WKT of the CF grid mapping, else ``proj:wkt2``."""
    if (root / store.GRID_MAPPING / ".zarray").is_file():
        sr = zarr.open_array(str(root / store.GRID_MAPPING), mode="r", zarr_format=2)
        wkt = sr.attrs.get("crs_wkt") or sr.attrs.get("spatial_ref")
        if wkt:
            return str(wkt)
    wkt = attrs.get("proj:wkt2")
    return str(wkt) if wkt else None


def _windows(height: int, width: int, step: int):
    """(row0, col0, h, w) of the step x step windows covering the array, row-major."""
    for r0 in range(0, height, step):
        for c0 in range(0, width, step):
            yield r0, c0, min(step, height - r0), min(step, width - c0)


def _window_step(chunk: int) -> int:
    """A window edge aligned to both the COG tiles and the store's chunks, about WINDOW."""
    unit = math.lcm(TILE, chunk)
    return unit * max(1, WINDOW // unit)


# ----------------------------------------------------------------------------- outputs


def check_output(path: str | os.PathLike, overwrite: bool, what: str) -> Path:
    """A writable output path; an existing one only with ``overwrite`` (UserError otherwise)."""
    out = Path(path)
    if out.is_dir():
        raise UserError(f"{what} {out} is a folder; pass a file path")
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise UserError(f"{what} {out} already exists; pass --overwrite to replace it")
    parent = out.absolute().parent
    if not parent.is_dir():
        raise UserError(f"{what} {out}: the folder {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{what} {out}: the folder {parent} is not writable")
    return out


def _temp_sibling(out: Path, suffix: str) -> Path:
    return out.absolute().parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}"


# ----------------------------------------------------------------------------- COG


def overview_factors(height: int, width: int, tile: int = TILE) -> list[int]:
    """2, 4, 8, ... until the smallest overview fits in one tile (GDAL's COG default)."""
    factors: list[int] = []
    factor = 2
    while max(height, width) / (factor // 2) > tile:
        factors.append(factor)
        factor *= 2
    return factors


def _cog_tags(ls: LabelStore, resampling: str) -> dict[str, str]:
    attrs = ls.attrs
    tags = {
        "CLASS_NAMES": json.dumps(ls.class_names),
        "NODATA_MEANING": "255 = nodata / not yet written",
        "OVERVIEW_RESAMPLING": resampling.upper(),
        "SOFTWARE": f"{attrs.get('software', 'reattn-batch')} {attrs.get('software_version', '')}",
        "RUN_FINGERPRINT": str(attrs.get("run_fingerprint", "")),
        "METHOD": str(attrs.get("method", "")),
        "COMPLETE": str(bool(attrs.get("complete", False))).lower(),
        "RANDOM_WEIGHTS": str(bool(attrs.get("random_weights", False))).lower(),
    }
    if attrs.get("random_weights"):
        tags["WARNING"] = "CLIP weights were RANDOM: these labels are for tests and mean nothing."
    return {k: v.strip() for k, v in tags.items()}


def export_cog(
    store_path: str | os.PathLike,
    out_path: str | os.PathLike,
    overwrite: bool = False,
    *,
    resampling: str = "mode",
    compress: str = "deflate",
) -> Path:
    """Write the store's labels as a Cloud-Optimised GeoTIFF at ``out_path``.

    512 x 512 tiles, DEFLATE (or ZSTD) compression, nodata 255, the class colours as the
    band's colour table, the class names and run fingerprint as metadata, overviews by
    ``mode`` (or ``nearest``) down to one tile. The labels are streamed window by window
    into a temporary tiled GeoTIFF, which GDAL's COG driver then rewrites in COG layout;
    the result replaces ``out_path`` only once it is complete.
    """
    import rasterio
    from rasterio.crs import CRS
    from rasterio.enums import Resampling
    from rasterio.errors import NotGeoreferencedWarning
    from rasterio.shutil import copy as rio_copy
    from rasterio.windows import Window

    if resampling not in OVERVIEW_RESAMPLING:
        raise UserError(f"overview resampling {resampling!r}: choose mode or nearest")
    if compress not in COMPRESSIONS:
        raise UserError(f"compression {compress!r}: choose deflate or zstd")
    ls = open_store(store_path)
    out = check_output(out_path, overwrite, "COG")
    georef: dict[str, Any] = {}
    if ls.crs_wkt is not None:
        georef["crs"] = CRS.from_wkt(ls.crs_wkt)
    if ls.crs_wkt is not None or ls.transform != Affine.identity():
        georef["transform"] = ls.transform

    tmp = _temp_sibling(out, ".tif")
    tmp_cog = _temp_sibling(out, ".cog.tif")
    factors = overview_factors(ls.height, ls.width)
    try:
        with (
            warnings.catch_warnings(),
            rasterio.Env(GDAL_TIFF_OVR_BLOCKSIZE=TILE, COMPRESS_OVERVIEW="DEFLATE"),
        ):
            # A store without a CRS gives a COG without one; GDAL's warning says only that.
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(
                tmp,
                "w",
                driver="GTiff",
                width=ls.width,
                height=ls.height,
                count=1,
                dtype="uint8",
                nodata=NODATA,
                tiled=True,
                blockxsize=TILE,
                blockysize=TILE,
                compress="deflate",
                zlevel=1,  # a scratch file: fast beats small
                bigtiff="IF_SAFER",
                **georef,
            ) as dst:
                dst.write_colormap(1, ls.colormap)  # before any data: it sets the photometric
                for r0, c0, h, w in _windows(ls.height, ls.width, _window_step(ls.chunk)):
                    block = np.asarray(ls.labels[r0 : r0 + h, c0 : c0 + w])
                    dst.write(block, 1, window=Window(c0, r0, w, h))
                dst.set_band_description(1, "class label")
                dst.update_tags(**_cog_tags(ls, resampling))
                dst.update_tags(
                    1,
                    flag_values=" ".join(str(i) for i in range(len(ls.class_names))),
                    flag_meanings=" ".join("_".join(n.split()) for n in ls.class_names),
                )
            if factors:
                with rasterio.open(tmp, "r+") as dst:
                    dst.build_overviews(factors, Resampling[resampling])
            options: dict[str, Any] = {
                "COMPRESS": compress.upper(),
                "BLOCKSIZE": TILE,
                "BIGTIFF": "IF_SAFER",
                "OVERVIEWS": "FORCE_USE_EXISTING" if factors else "NONE",
                "RESAMPLING": resampling.upper(),
            }
            if compress == "deflate":
                options["LEVEL"] = 6
            rio_copy(str(tmp), str(tmp_cog), driver="COG", **options)
            problems = cog_problems(tmp_cog)
        if problems:
            raise RuntimeError(f"GDAL wrote an invalid COG: {'; '.join(problems)}")
        os.replace(tmp_cog, out)
    except OSError as exc:
        raise UserError(f"cannot write the COG {out} ({exc.strerror or exc})") from None
    finally:
        for path in (tmp, tmp_cog):
            path.unlink(missing_ok=True)
    return out


def cog_problems(path: str | os.PathLike) -> list[str]:
    """What keeps ``path`` from being a valid COG, as far as GDAL reports it (empty: valid).

    The checks of GDAL's ``validate_cloud_optimized_geotiff.py`` that rasterio can reach:
    the structural-metadata header GDAL's COG writer puts right after the TIFF header
    (IFDs first, then overview tiles, then the full-resolution tiles), ``LAYOUT=COG``,
    tiles on the full resolution and every overview, overviews down to one tile.
    """
    import rasterio

    problems: list[str] = []
    with open(path, "rb") as f:
        head = f.read(64)
    offset = 16 if head[:4] in (b"II+\x00", b"MM\x00+") else 8
    if not head[offset:].startswith(b"GDAL_STRUCTURAL_METADATA_SIZE="):
        problems.append("no GDAL structural-metadata header (IFDs may not come first)")
    with rasterio.open(path) as ds:
        if ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") != "COG":
            problems.append("GDAL does not report LAYOUT=COG")
        if not ds.profile.get("tiled"):
            problems.append("the full resolution is not tiled")
        factors = ds.overviews(1)
        if max(ds.height, ds.width) > TILE and not factors:
            problems.append("no overviews on an image larger than one tile")
    for level in range(len(factors)):
        with rasterio.open(path, overview_level=level) as ov:
            if ov.block_shapes[0] != (TILE, TILE) and max(ov.height, ov.width) > TILE:
                problems.append(f"overview {level} is not tiled {TILE} x {TILE}")
            last = (ov.height, ov.width)
    if factors and max(last) > TILE:
        problems.append(f"the smallest overview ({last[0]} x {last[1]}) is larger than a tile")
    return problems


# ----------------------------------------------------------------------------- quicklook


def quicklook_shape(height: int, width: int, max_size: int = 1024) -> tuple[int, int]:
    """(rows, cols) of the quicklook's map: the long side scaled to at most ``max_size``."""
    if max_size < 1:
        raise UserError(f"quicklook size {max_size}: must be at least 1 pixel")
    scale = min(1.0, max_size / max(height, width))
    return max(1, min(max_size, round(height * scale))), max(1, min(max_size, round(width * scale)))


def _cell_starts(n: int, m: int) -> np.ndarray:
    """First source index of each of m output cells over n source pixels (m + 1 entries)."""
    # source pixel i falls in cell floor(i * m / n); cell j starts at ceil(j * n / m).
    return np.array([-(-j * n // m) for j in range(m + 1)], dtype=np.int64)


def decimate_mode(ls: LabelStore, out_h: int, out_w: int) -> np.ndarray:
    """The labels reduced to (out_h, out_w) by the most common value of each cell.

    Cells are the source pixels i with floor(i * out / n) equal; nodata counts only where a
    cell has no valid pixel (GDAL's ``mode``); ties go to the smaller class index. Read in
    windows of whole cells, so memory stays bounded for any scene.
    """
    return _decimate(ls, out_h, out_w)[0]


def _decimate(ls: LabelStore, out_h: int, out_w: int) -> tuple[np.ndarray, np.ndarray]:
    """(decimate_mode's labels, (256,) exact full-resolution count of every label value)."""
    height, width = ls.height, ls.width
    totals = np.zeros(256, np.int64)
    if (out_h, out_w) == (height, width):
        out = np.empty((height, width), np.uint8)
        for r0, c0, h, w in _windows(height, width, _window_step(ls.chunk)):
            block = np.asarray(ls.labels[r0 : r0 + h, c0 : c0 + w])
            out[r0 : r0 + h, c0 : c0 + w] = block
            totals += np.bincount(block.ravel(), minlength=256)
        return out, totals
    rows, cols = _cell_starts(height, out_h), _cell_starts(width, out_w)
    row_of = np.repeat(np.arange(out_h), np.diff(rows))
    col_of = np.repeat(np.arange(out_w), np.diff(cols))
    n_values = 256
    # Cells per window: about WINDOW^2 source pixels, at most 2^22 count bins.
    per_side = max(1, int(math.sqrt((1 << 22) / n_values)))
    step_r = max(1, min(int(WINDOW * out_h / height), per_side))
    step_c = max(1, min(int(WINDOW * out_w / width), per_side))
    out = np.empty((out_h, out_w), np.uint8)
    for i0 in range(0, out_h, step_r):
        i1 = min(out_h, i0 + step_r)
        r0, r1 = int(rows[i0]), int(rows[i1])
        for j0 in range(0, out_w, step_c):
            j1 = min(out_w, j0 + step_c)
            c0, c1 = int(cols[j0]), int(cols[j1])
            block = np.asarray(ls.labels[r0:r1, c0:c1])
            local = (row_of[r0:r1, None] - i0) * (j1 - j0) + (col_of[None, c0:c1] - j0)
            n_cells = (i1 - i0) * (j1 - j0)
            counts = np.bincount(
                (local * n_values + block).ravel(), minlength=n_cells * n_values
            ).reshape(n_cells, n_values)
            totals += counts.sum(axis=0)
            valid = counts[:, :NODATA].sum(axis=1) > 0
            counts[valid, NODATA] = 0  # nodata wins only in a cell without valid pixels
            out[i0:i1, j0:j1] = counts.argmax(axis=1).astype(np.uint8).reshape(i1 - i0, j1 - j0)
    return out, totals


def colourise(labels: np.ndarray, colormap: dict[int, tuple]) -> np.ndarray:
    """(h, w) uint8 labels -> (h, w, 3) uint8 RGB; nodata and unknown values light grey."""
    lut = np.tile(np.array(NODATA_QUICKLOOK, np.uint8), (256, 1))
    for index, rgba in colormap.items():
        if index != NODATA:
            lut[index] = rgba[:3]
    return lut[labels]


def _legend_entries(
    ls: LabelStore, counts: np.ndarray
) -> list[tuple[tuple[int, int, int] | None, str]]:
    """(swatch colour, text) rows of the legend: each class with its share of the valid
    pixels (``counts``: full-resolution count of every label value), then nodata if any."""
    valid = int(counts[:NODATA].sum())
    rows: list[tuple[tuple[int, int, int] | None, str]] = []
    for c, name in enumerate(ls.class_names):
        share = f"  {100 * counts[c] / valid:.1f}%" if valid else ""
        rows.append((tuple(ls.colormap[c][:3]), f"{c} {name}{share}"))
    if counts[NODATA]:
        rows.append((NODATA_QUICKLOOK, "nodata / not written"))
    return rows


def export_quicklook(
    store_path: str | os.PathLike,
    out_png: str | os.PathLike,
    max_size: int = 1024,
    overwrite: bool = False,
) -> tuple[int, int]:
    """Write a colour PNG of the labels with a legend; returns the PNG's (width, height).

    The map is the block-wise mode of the labels at most ``max_size`` pixels on its long
    side (``quicklook_shape``), drawn at the top left in the store's class colours with
    nodata light grey; the legend (a colour swatch and name per class, with its share of
    the valid pixels, counted at full resolution) is to its right on white.
    """
    from PIL import Image, ImageDraw, ImageFont

    ls = open_store(store_path)
    out = check_output(out_png, overwrite, "quicklook")
    out_h, out_w = quicklook_shape(ls.height, ls.width, max_size)
    labels, counts = _decimate(ls, out_h, out_w)
    rgb = colourise(labels, ls.colormap)

    # Text scaled with the map (Pillow's built-in font, no font files needed).
    font = ImageFont.load_default(size=max(11, min(20, max(out_h, out_w) // 60)))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    entries = _legend_entries(ls, counts)
    title = "classes"
    lines: list[tuple[tuple[int, int, int] | None, str, tuple[int, int, int]]] = [
        (None, title, (0, 0, 0))
    ]
    lines += [(colour, text, (0, 0, 0)) for colour, text in entries]
    if ls.attrs.get("random_weights"):
        lines.append((None, "RANDOM WEIGHTS: not a real map", (200, 0, 0)))
    if not ls.attrs.get("complete"):
        lines.append((None, "incomplete run", (200, 0, 0)))
    pad, gap = 8, 6
    swatch = getattr(font, "size", 11) + 2
    line_h = max(swatch, *(probe.textbbox((0, 0), t, font=font)[3] for _, t, _ in lines)) + 4
    text_w = max(probe.textbbox((0, 0), t, font=font)[2] for _, t, _ in lines)
    legend_w = pad + swatch + gap + text_w + pad
    legend_h = pad + line_h * len(lines) + pad

    canvas = Image.new("RGB", (out_w + legend_w, max(out_h, legend_h)), (255, 255, 255))
    canvas.paste(Image.fromarray(rgb, "RGB"), (0, 0))
    draw = ImageDraw.Draw(canvas)
    x0, y = out_w + pad, pad
    for colour, text, ink in lines:
        tx = x0
        if colour is not None:
            top = y + (line_h - swatch) // 2
            draw.rectangle(
                (x0, top, x0 + swatch - 1, top + swatch - 1), fill=colour, outline=(0, 0, 0)
            )
            tx = x0 + swatch + gap
        draw.text((tx, y + 2), text, fill=ink, font=font)
        y += line_h

    tmp = _temp_sibling(out, ".png")
    try:
        canvas.save(tmp, format="PNG", optimize=True)
        os.replace(tmp, out)
    except OSError as exc:
        raise UserError(f"cannot write the quicklook {out} ({exc.strerror or exc})") from None
    finally:
        tmp.unlink(missing_ok=True)
    return canvas.size


# ----------------------------------------------------------------------------- info


def class_counts(ls: LabelStore) -> np.ndarray:
    """(256,) int64 pixel count of every label value, streamed window by window."""
    counts = np.zeros(256, np.int64)
    for r0, c0, h, w in _windows(ls.height, ls.width, _window_step(ls.chunk)):
        block = np.asarray(ls.labels[r0 : r0 + h, c0 : c0 + w])
        counts += np.bincount(block.ravel(), minlength=256)
    return counts


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


def store_info(store_path: str | os.PathLike) -> dict[str, Any]:
    """A JSON-ready summary of a label store: classes with pixel counts, hectares and
    percent of the valid pixels, nodata, parameters, weights, progress and fingerprint."""
    from pyproj import CRS as ProjCRS
    from rasterio.crs import CRS

    ls = open_store(store_path)
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
    if (ls.path / store.BLOCK_DONE / ".zarray").is_file():
        done_arr = zarr.open_array(str(ls.path / store.BLOCK_DONE), mode="r", zarr_format=2)
        blocks_total = int(np.prod(done_arr.shape))
        blocks_done = len(store.done_blocks(ls.path))
        progress = {
            "blocks_done": blocks_done,
            "blocks_total": blocks_total,
            "percent": 100 * blocks_done / blocks_total if blocks_total else None,
            "block_size": attrs.get("block_size"),
            "grid": list(done_arr.shape),
        }

    t = ls.transform
    return store._jsonable(
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
