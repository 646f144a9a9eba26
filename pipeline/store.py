"""The output label store: one Zarr group per scene job (SPEC 3.3, 3.5).

This module is the one place that knows the store's layout. ``create_store`` writes
everything except the label data (coordinates, georeferencing, attributes); the data is
written later, block by block, by ``write_block`` from any number of processes.

Layout (Zarr format 2, chunk keys ``labels/<row>/<col>``)::

    <store>/
      .zgroup .zattrs .zmetadata   group attributes (user attrs, proj:/spatial:, CF)
      labels       (y, x) uint8, chunks (chunk, chunk), fill 255 (nodata / unwritten)
      confidence   (y, x) uint8, same chunks, fill 255, optional (max prob x 254)
      x            (x,) float64, pixel-centre CRS x coordinates
      y            (y,) float64, pixel-centre CRS y coordinates
      spatial_ref  () int64, CF grid mapping (crs_wkt, spatial_ref, GeoTransform)

Why Zarr format 2: GDAL 3.10 (the version in rasterio's wheels) cannot read the Zarr v3
arrays zarr-python 3 writes (it rejects the mandatory ``bytes`` codec: "Unsupported codec:
bytes"); format 2 with a zstd compressor opens in GDAL, zarr-python and xarray alike.

What each reader uses (verified with rasterio 1.4.4 / GDAL 3.10.3, xarray, rioxarray):

- GDAL (``rasterio.open('ZARR:"out.zarr":/labels')``): the dimension names in
  ``_ARRAY_DIMENSIONS``, the 1-D ``x``/``y`` indexing arrays (it derives the geotransform
  from their first value and spacing), the CRS from ``_CRS`` / the CF grid mapping, and
  nodata from the array's ``fill_value`` (255).
- xarray: ``_ARRAY_DIMENSIONS``; the ``coordinates`` attribute makes ``spatial_ref`` a
  coordinate of ``labels``. With zarr format 2 xarray takes ``fill_value`` as
  ``_FillValue``: ``xr.open_zarr(path)`` gives float labels with NaN for nodata, and
  ``xr.open_zarr(path, mask_and_scale=False)`` the raw uint8 with 255.
- rioxarray: ``grid_mapping`` -> ``spatial_ref`` (``crs_wkt``, ``GeoTransform``).

Writers: ``create_store`` builds the store in a temporary sibling folder and renames it into
place, so a store path never holds a half-created store. Chunks are written with atomic
renames by zarr's LocalStore, and disjoint chunk-aligned regions touch disjoint chunk files,
so concurrent ``write_block`` calls from different processes need no lock. An all-nodata
chunk is not stored (it reads as 255 anyway).
"""

from __future__ import annotations

import colorsys
import json
import math
import os
import shutil
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from affine import Affine
from numcodecs import Zstd

from workers.classes import MAX_CLASSES
from workers.errors import UserError

NODATA = 255
LABELS = "labels"
CONFIDENCE = "confidence"
GRID_MAPPING = "spatial_ref"
STORE_LAYOUT_VERSION = 1

# Lossless, fast, ~50-100x on label maps; read by GDAL's Zarr driver (3.10 wheels) and
# zarr-python / numcodecs. Verified in tests/test_store.py by reading back with rasterio.
COMPRESSOR = Zstd(level=5)
_CHUNK_KEYS = {"name": "v2", "separator": "/"}  # nested chunk folders: labels/<row>/<col>

_PROJ_CONVENTION = {
    "schema_url": "https://raw.githubusercontent.com/zarr-experimental/geo-proj/refs/tags/v1/schema.json",
    "spec_url": "https://github.com/zarr-experimental/geo-proj/blob/v1/README.md",
    "uuid": "f17cb550-5864-4468-aeb7-f3180cfb622f",
    "name": "proj:",
    "description": "Coordinate reference system information for geospatial data",
}
_SPATIAL_CONVENTION = {
    "schema_url": "https://raw.githubusercontent.com/zarr-conventions/spatial/refs/tags/v1/schema.json",
    "spec_url": "https://github.com/zarr-conventions/spatial/blob/v1/README.md",
    "uuid": "689b58e2-cf7b-45e0-9fff-9cfc0883d6b4",
    "name": "spatial",
    "description": "Spatial coordinate information",
}

# Distinct, readable colours for classes 1, 2, ... (class 0 / background is grey).
_BASE_COLOURS: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (255, 225, 25),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (220, 190, 255),
    (170, 110, 40),
    (255, 250, 200),
    (128, 0, 0),
    (170, 255, 195),
    (128, 128, 0),
    (255, 215, 180),
    (0, 0, 128),
)
_BACKGROUND_COLOUR = (96, 96, 96)


@dataclass(frozen=True)
class StoreLayout:
    """The native grid of a scene and how its label store is chunked.

    height, width: the scene's size in native pixels (rows, columns).
    transform: native pixel (col, row) -> CRS (x, y), upper-left-corner convention
        (rasterio's ``dataset.transform``); north-up or south-up, no rotation.
    crs_wkt: the scene's CRS as WKT (any version GDAL parses), or None for a scene
        without a CRS: then x/y are pixel coordinates and no grid mapping is written.
    chunk: Zarr chunk edge in pixels (square chunks); block edges are multiples of it.
    with_confidence: also create the ``confidence`` array.
    """

    height: int
    width: int
    transform: Affine
    crs_wkt: str | None
    chunk: int = 512
    with_confidence: bool = False


# ----------------------------------------------------------------------------- palette


def class_palette(n: int, background_index: int | None = 0) -> list[tuple[int, int, int]]:
    """n deterministic RGB colours (0..255): the background class grey, the rest distinct.

    Classes other than the background take a fixed list of 19 well-separated colours in
    order; beyond that, hues step by the golden angle with alternating lightness.
    """
    colours: list[tuple[int, int, int]] = []
    k = 0
    for c in range(n):
        if c == background_index:
            colours.append(_BACKGROUND_COLOUR)
            continue
        if k < len(_BASE_COLOURS):
            colours.append(_BASE_COLOURS[k])
        else:
            j = k - len(_BASE_COLOURS)
            hue = (j * 0.6180339887498949) % 1.0
            lightness = (0.45, 0.65, 0.3)[j % 3]
            r, g, b = colorsys.hls_to_rgb(hue, lightness, 0.75)
            colours.append((round(r * 255), round(g * 255), round(b * 255)))
        k += 1
    return colours


def _flag_meaning(name: str) -> str:
    """A class name as one CF flag_meanings word: whitespace runs -> '_'."""
    return "_".join(name.split())


# ----------------------------------------------------------------------------- georeferencing


def _crs_attrs(crs_wkt: str) -> dict[str, Any]:
    """CF grid-mapping attributes (pyproj's to_cf) with the caller's WKT kept verbatim."""
    from pyproj import CRS as ProjCRS

    try:
        crs = ProjCRS.from_wkt(crs_wkt)
    except Exception as exc:  # pyproj raises CRSError; keep the message
        raise UserError(
            f"the scene's CRS is not valid WKT ({exc}); fix or assign the CRS"
        ) from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # to_cf warns when a CRS has no CF mapping
        try:
            cf = _checked_attrs(crs.to_cf())
        except Exception:
            cf = {}
    cf["crs_wkt"] = crs_wkt
    cf["spatial_ref"] = crs_wkt  # GDAL's and rioxarray's name for the same WKT
    return cf


def _proj_attrs(crs_wkt: str) -> dict[str, Any]:
    """The ``proj:`` convention attributes: WKT2 and, if the CRS has one, its EPSG code."""
    from rasterio.crs import CRS

    crs = CRS.from_wkt(crs_wkt)
    out: dict[str, Any] = {"proj:wkt2": crs.to_wkt(version="WKT2_2019")}
    epsg = crs.to_epsg()
    if epsg is not None:
        out["proj:code"] = f"EPSG:{epsg}"
    return out


def _axis_attrs(crs_wkt: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """CF attributes of the x and y coordinate arrays."""
    if crs_wkt is None:
        return (
            {"long_name": "pixel column (centre)", "units": "pixel", "axis": "X"},
            {"long_name": "pixel row (centre)", "units": "pixel", "axis": "Y"},
        )
    from rasterio.crs import CRS

    crs = CRS.from_wkt(crs_wkt)
    if crs.is_geographic:
        return (
            {"standard_name": "longitude", "units": "degrees_east", "axis": "X"},
            {"standard_name": "latitude", "units": "degrees_north", "axis": "Y"},
        )
    units = crs.linear_units or "unknown"
    return (
        {"standard_name": "projection_x_coordinate", "units": units, "axis": "X"},
        {"standard_name": "projection_y_coordinate", "units": units, "axis": "Y"},
    )


def pixel_centres(layout: StoreLayout) -> tuple[np.ndarray, np.ndarray]:
    """(x (width,), y (height,)) float64 CRS coordinates of pixel centres.

    x[col] = c + a * (col + 0.5), y[row] = f + e * (row + 0.5) for transform (a, b, c, d, e, f).
    """
    t = layout.transform
    x = t.c + t.a * (np.arange(layout.width, dtype=np.float64) + 0.5)
    y = t.f + t.e * (np.arange(layout.height, dtype=np.float64) + 0.5)
    return x, y


def _bbox(layout: StoreLayout) -> list[float]:
    """[xmin, ymin, xmax, ymax] of the pixel edges, in CRS units."""
    t = layout.transform
    xs = (t.c, t.c + t.a * layout.width)
    ys = (t.f, t.f + t.e * layout.height)
    return [float(min(xs)), float(min(ys)), float(max(xs)), float(max(ys))]


def _geotransform(t: Affine) -> str:
    """GDAL's geotransform as the space-separated string CF/GDAL/rioxarray use."""
    return " ".join(repr(float(v)) for v in t.to_gdal())


def _validate_layout(layout: StoreLayout) -> None:
    if layout.height <= 0 or layout.width <= 0:
        raise ValueError(f"store size must be positive, got {layout.height} x {layout.width}")
    if layout.chunk <= 0:
        raise ValueError(f"chunk must be positive, got {layout.chunk}")
    t = layout.transform
    if not all(math.isfinite(v) for v in tuple(t)[:6]):
        raise UserError(f"the scene's transform has non-finite values ({tuple(t)[:6]})")
    if t.b != 0 or t.d != 0:
        raise UserError(
            "the scene's geotransform is rotated or sheared, which the label store cannot "
            "represent; warp it to a north-up grid first (gdalwarp)"
        )
    if t.a == 0 or t.e == 0:
        raise UserError(f"the scene's transform has a zero pixel size ({tuple(t)[:6]})")


# ----------------------------------------------------------------------------- json


def _jsonable(value: Any) -> Any:
    """numpy scalars/arrays, tuples, sets and paths -> plain JSON types (recursively)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, set | frozenset):
        return [_jsonable(v) for v in sorted(value, key=str)]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def _checked_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    out = _jsonable(attrs)
    try:
        json.dumps(out, allow_nan=True)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"store attributes must be JSON-serialisable: {exc}") from None
    return out


# ----------------------------------------------------------------------------- create


def _looks_like_zarr(path: Path) -> bool:
    if path.is_dir():
        if not any(path.iterdir()):
            return True  # an empty folder is safe to replace
        return any((path / name).exists() for name in (".zgroup", ".zarray", "zarr.json"))
    return False


def _clear_cache(path: Path) -> None:
    key = str(path.resolve())
    for cache_key in [k for k in _ARRAYS if k[0] == key]:
        del _ARRAYS[cache_key]


def create_store(
    path: str | os.PathLike,
    layout: StoreLayout,
    attrs: dict[str, Any],
    overwrite: bool,
    class_names: list[str],
    background_index: int | None = 0,
    blocks: tuple[int, int] = (1, 1),
) -> None:
    """Create the label store at ``path`` with all metadata and no label data.

    attrs: group attributes from the caller (classes and synonyms, method and its
        hyperparameters, weight identities, software version, run fingerprint...); they
        must be JSON-serialisable (numpy scalars/arrays and tuples are converted). Keys the
        store sets itself (georeferencing, ``class_names``) take precedence.
    overwrite: replace an existing store at ``path``; without it an existing path is a
        UserError. Only a Zarr store or an empty folder is ever removed.
    class_names: the final class list; label c means class_names[c] (at most 255 classes).
    background_index: the class drawn grey in the colour map (None: no background class).
    blocks: the block grid (rows, cols); ``block_done`` records each block's completion.
    """
    path = Path(path)
    _validate_layout(layout)
    if not class_names:
        raise ValueError("class_names is empty")
    if len(class_names) > MAX_CLASSES:
        raise UserError(
            f"{len(class_names)} classes do not fit in a uint8 label map with 255 as nodata; "
            f"pass at most {MAX_CLASSES} classes"
        )
    user_attrs = _checked_attrs(attrs)

    if path.exists() or path.is_symlink():
        if not overwrite:
            raise UserError(
                f"{path} already exists; pass --overwrite to replace it or --resume to finish it"
            )
        if not _looks_like_zarr(path):
            raise UserError(
                f"{path} exists and is not a Zarr store, so --overwrite will not delete it; "
                "choose another output path"
            )

    parent = path.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(
            f"cannot create the folder for the output store {path} ({exc.strerror or exc}); "
            "pass an output path in a writable folder"
        ) from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(
            f"the folder {parent} of the output store {path} is not writable; "
            "pass an output path in a writable folder"
        )

    tmp = parent / f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        _build(tmp, layout, user_attrs, class_names, background_index, blocks)
        if path.exists() or path.is_symlink():
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        os.rename(tmp, path)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(
            f"cannot write the output store {path} ({exc.strerror or exc}); "
            "check the folder is writable and has free space"
        ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _clear_cache(path)


def _build(
    root: Path,
    layout: StoreLayout,
    user_attrs: dict[str, Any],
    class_names: list[str],
    background_index: int | None,
    blocks: tuple[int, int],
) -> None:
    """Write the whole store (no label data) into the new folder ``root``."""
    crs_wkt = layout.crs_wkt
    t = layout.transform
    n = len(class_names)

    spatial = {
        "spatial:dimensions": ["y", "x"],
        "spatial:transform": [float(v) for v in tuple(t)[:6]],
        "spatial:transform_type": "affine",
        "spatial:shape": [layout.height, layout.width],
        "spatial:bbox": _bbox(layout),
        "spatial:registration": "pixel",
    }
    if crs_wkt is not None:
        conventions = {"zarr_conventions": [_PROJ_CONVENTION, _SPATIAL_CONVENTION]}
        geo = {**conventions, **_proj_attrs(crs_wkt), **spatial}
        cf_crs = _crs_attrs(crs_wkt)
    else:
        geo = {"zarr_conventions": [_SPATIAL_CONVENTION], **spatial}
        cf_crs = {}

    group_attrs: dict[str, Any] = dict(user_attrs)
    group_attrs.update(
        {
            "Conventions": "CF-1.8",
            "store_layout_version": STORE_LAYOUT_VERSION,
            "class_names": list(class_names),
            "nodata": NODATA,
            "chunk": layout.chunk,
            **geo,
        }
    )
    if crs_wkt is None:
        group_attrs["crs_warning"] = (
            "the scene has no CRS: x/y are pixel coordinates (column/row of pixel centres) "
            "and the store is not georeferenced"
        )

    palette = class_palette(n, background_index)
    colormap = {str(c): [*palette[c], 255] for c in range(n)}
    colormap[str(NODATA)] = [0, 0, 0, 0]

    def raster_attrs(extra: dict[str, Any]) -> dict[str, Any]:
        a: dict[str, Any] = {"_ARRAY_DIMENSIONS": ["y", "x"], **extra, **geo}
        if crs_wkt is not None:
            a["grid_mapping"] = GRID_MAPPING
            a["coordinates"] = GRID_MAPPING  # xarray: spatial_ref becomes a coordinate
            a["_CRS"] = {"wkt": crs_wkt}  # GDAL's own CRS attribute
        return a

    group = zarr.open_group(str(root), mode="w-", zarr_format=2, attributes=group_attrs)

    x, y = pixel_centres(layout)
    x_attrs, y_attrs = _axis_attrs(crs_wkt)
    for name, values, extra in (("x", x, x_attrs), ("y", y, y_attrs)):
        arr = group.create_array(
            name,
            shape=values.shape,
            chunks=values.shape,
            dtype="float64",
            fill_value=None,
            compressors=COMPRESSOR,
            chunk_key_encoding=_CHUNK_KEYS,
            attributes={"_ARRAY_DIMENSIONS": [name], **extra},
        )
        arr[...] = values

    if crs_wkt is not None:
        sr = group.create_array(
            GRID_MAPPING,
            shape=(),
            dtype="int64",
            fill_value=None,
            compressors=None,
            attributes={"_ARRAY_DIMENSIONS": [], **cf_crs, "GeoTransform": _geotransform(t)},
        )
        sr[...] = 0

    def raster(name: str, extra: dict[str, Any]) -> None:
        group.create_array(
            name,
            shape=(layout.height, layout.width),
            chunks=(layout.chunk, layout.chunk),
            dtype="uint8",
            fill_value=NODATA,
            compressors=COMPRESSOR,
            chunk_key_encoding=_CHUNK_KEYS,
            attributes=raster_attrs({**extra, "nodata": NODATA}),
        )

    raster(
        LABELS,
        {
            "long_name": "class label",
            "flag_values": list(range(n)),
            "flag_meanings": " ".join(_flag_meaning(c) for c in class_names),
            "colormap": colormap,
        },
    )
    if layout.with_confidence:
        raster(
            CONFIDENCE,
            {"long_name": "confidence: max class probability x 254", "valid_range": [0, 254]},
        )
    for name, meaning in (
        (BLOCK_STARTED, "1 once a task has started the block"),
        (BLOCK_DONE, "1 once the block's data is written (completion record for --resume)"),
    ):
        group.create_array(
            name,
            shape=blocks,
            chunks=(1, 1),  # one file per block: each task writes only its own record
            dtype="uint8",
            fill_value=0,
            compressors=None,
            chunk_key_encoding=_CHUNK_KEYS,
            attributes={"_ARRAY_DIMENSIONS": ["block_row", "block_col"], "long_name": meaning},
        )
    zarr.consolidate_metadata(str(root))


# ----------------------------------------------------------------------------- write/read

BLOCK_DONE = "block_done"
BLOCK_STARTED = "block_started"

# Per-process cache of opened arrays: (resolved store path, array name) ->
# ((inode, mtime_ns) of the array's .zarray, array). The stamp notices a recreated store.
_ARRAYS: dict[tuple[str, str], tuple[tuple[int, int], zarr.Array]] = {}


def _open_array(path: str | os.PathLike, name: str, mode: str = "r+") -> zarr.Array:
    root = Path(path).resolve()
    meta = root / name / ".zarray"
    try:
        st = meta.stat()
    except FileNotFoundError:
        if not (root / ".zgroup").exists():
            raise UserError(
                f"{root} is not a label store (no .zgroup); create it first or check the path"
            ) from None
        raise KeyError(f"{root} has no '{name}' array") from None
    stamp = (st.st_ino, st.st_mtime_ns)
    key = (str(root), name)
    hit = _ARRAYS.get(key)
    if hit is not None and hit[0] == stamp and (mode == "r" or not hit[1].read_only):
        return hit[1]
    arr = zarr.open_array(store=str(root), path=name, mode=mode, zarr_format=2)
    _ARRAYS[key] = (stamp, arr)
    return arr


def _check_region(arr: zarr.Array, row0: int, col0: int, h: int, w: int) -> None:
    height, width = arr.shape
    ch, cw = arr.chunks
    if row0 < 0 or col0 < 0 or row0 + h > height or col0 + w > width:
        raise ValueError(
            f"block rows {row0}:{row0 + h}, cols {col0}:{col0 + w} outside the store "
            f"({height} x {width})"
        )
    if row0 % ch or col0 % cw:
        raise ValueError(f"block origin ({row0}, {col0}) is not on the {ch} x {cw} chunk grid")
    if (h % ch and row0 + h != height) or (w % cw and col0 + w != width):
        raise ValueError(
            f"block ({row0}, {col0}) of {h} x {w} does not end on a chunk boundary or the "
            f"scene edge (chunks {ch} x {cw}, store {height} x {width})"
        )


def write_block(
    path: str | os.PathLike,
    row0: int,
    col0: int,
    labels: np.ndarray,
    confidence: np.ndarray | None = None,
) -> None:
    """Write one native-pixel block into an existing store.

    row0, col0: the block's upper-left pixel; must lie on the chunk grid.
    labels: (h, w) uint8 class indices, 255 = nodata; h and w are multiples of the chunk
        edge unless the block ends at the scene edge.
    confidence: (h, w) uint8 (max prob x 254), required exactly when the store has a
        ``confidence`` array.

    Safe to call concurrently from several processes for disjoint blocks: each block owns
    whole chunks, and every chunk file is written atomically (temp file + rename).
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.dtype != np.uint8:
        raise ValueError(f"labels must be a 2-D uint8 array, got {labels.dtype} {labels.shape}")
    h, w = labels.shape
    arr = _open_array(path, LABELS)
    _check_region(arr, row0, col0, h, w)
    has_conf = (Path(path) / CONFIDENCE / ".zarray").exists()
    if confidence is not None:
        confidence = np.asarray(confidence)
        if not has_conf:
            raise ValueError(f"{path} has no confidence array; create it with with_confidence")
        if confidence.shape != labels.shape or confidence.dtype != np.uint8:
            raise ValueError(
                f"confidence must be uint8 of shape {labels.shape}, "
                f"got {confidence.dtype} {confidence.shape}"
            )
        _open_array(path, CONFIDENCE)[row0 : row0 + h, col0 : col0 + w] = confidence
    elif has_conf:
        raise ValueError(f"{path} has a confidence array: pass the block's confidence too")
    arr[row0 : row0 + h, col0 : col0 + w] = labels


def open_labels(path: str | os.PathLike) -> zarr.Array:
    """The store's ``labels`` array, (height, width) uint8, read-only."""
    return _open_array(path, LABELS, mode="r")


def read_attrs(path: str | os.PathLike) -> dict[str, Any]:
    """The group attributes as a plain dict (read from .zattrs, not the consolidated copy)."""
    root = Path(path)
    if not (root / ".zgroup").exists():
        raise UserError(f"{root} is not a label store (no .zgroup); check the path")
    group = zarr.open_group(str(root), mode="r", zarr_format=2, use_consolidated=False)
    return dict(group.attrs.asdict())


def update_attrs(path: str | os.PathLike, **attrs: Any) -> None:
    """Merge ``attrs`` into the group attributes and refresh the consolidated metadata.

    Call from one process at a time (the job's driver): the update is read-modify-write.
    """
    root = Path(path)
    if not (root / ".zgroup").exists():
        raise UserError(f"{root} is not a label store (no .zgroup); check the path")
    new = _checked_attrs(attrs)
    group = zarr.open_group(str(root), mode="r+", zarr_format=2, use_consolidated=False)
    group.attrs.update(new)
    zarr.consolidate_metadata(str(root))


# ----------------------------------------------------------------------- completion records


def _mark(path: str | os.PathLike, name: str, index: int) -> None:
    arr = _open_array(path, name)
    row, col = divmod(index, arr.shape[1])
    arr[row, col] = 1


def mark_block_started(path: str | os.PathLike, index: int) -> None:
    """Record that a task started block ``index`` (row-major)."""
    _mark(path, BLOCK_STARTED, index)


def mark_block_done(path: str | os.PathLike, index: int) -> None:
    """Record block ``index`` (row-major) as done. Call only after its data is written:
    the record is its own chunk file, written atomically, so a torn block has none."""
    _mark(path, BLOCK_DONE, index)


def _records(path: str | os.PathLike, name: str) -> set[int]:
    marks = zarr.open_array(str(Path(path) / name), mode="r", zarr_format=2)[...]
    return {int(i) for i in np.flatnonzero(marks.reshape(-1))}


def done_blocks(path: str | os.PathLike) -> set[int]:
    """Indices (row-major) of the blocks with a completion record."""
    return _records(path, BLOCK_DONE)


def started_blocks(path: str | os.PathLike) -> set[int]:
    """Indices of the blocks a task has started (finished or not)."""
    return _records(path, BLOCK_STARTED)


# Attributes that decide the labels; a resumed run must match them all.
RUN_KEYS = (
    "scene_identity", "bands", "stretch", "variable", "classes", "method", "hyperparameters",
    "upsampler", "weights", "model_gsd", "block_size",
)  # fmt: skip


def prepare(
    path: str | os.PathLike,
    layout: StoreLayout,
    attrs: dict[str, Any],
    class_names: list[str],
    blocks: tuple[int, int],
    overwrite: bool,
    resume: bool,
    background_index: int | None = 0,
) -> set[int]:
    """Create the store, or open it for ``--resume``; returns the blocks already done.

    A resumed store must have been written by the same run (same ``run_fingerprint``);
    otherwise a UserError says which settings differ.
    """
    path = Path(path)
    if resume and _looks_like_zarr(path):
        old = read_attrs(path)
        if old.get("run_fingerprint") != attrs.get("run_fingerprint"):
            new = _checked_attrs(attrs)
            differ = [k for k in RUN_KEYS if old.get(k) != new.get(k)] or ["run_fingerprint"]
            raise UserError(
                f"--resume {path}: the store was written by a different run "
                f"({', '.join(differ)} differ); "
                "pass the same settings, or --overwrite to start again"
            )
        return done_blocks(path)
    create_store(path, layout, attrs, overwrite, class_names, background_index, blocks)
    return set()
