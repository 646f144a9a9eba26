"""Opening a scene and reading windows of it (SPEC 3.2): the one place that knows input formats.

``open_scene`` reads metadata only (plus, for non-uint8 data, one decimated read for the
stretch) and returns a picklable :class:`SceneInfo`; ``read_window`` turns any window in
native pixel coordinates into ``(rgb uint8 (h, w, 3), valid bool (h, w))``.

Formats
    GeoTIFF/COG (anything GDAL opens) through rasterio: local paths, ``/vsicurl/``,
    ``/vsis3/`` (``http(s)://`` becomes ``/vsicurl/...``, ``s3://`` becomes ``/vsis3/...``,
    ``gs://`` becomes ``/vsigs/...``). A Zarr store (a directory, a path ending in ``.zarr``
    or ``zarr://PATH``) through xarray/rioxarray: the variable named by ``variable`` or the
    only 3-D (band, y, x) (or 2-D (y, x)) data variable; CRS and transform from its CF
    grid mapping.

Bands
    ``bands`` are 1-based source bands used as R, G, B (one band is repeated to grey).
    Default: R, G, B from the colour interpretation when all three are present, else the
    first three of 3-4 band data; one band is grey; two bands are grey + alpha when the
    second is alpha. A band with ALPHA colour interpretation that is not among the
    chosen bands becomes the mask band. More than 4 bands need explicit ``bands``.

Valid mask (the same rule for every window and the stretch sample)
    A pixel is valid when all of these hold:
    * the alpha band (if any) is non-zero, or else GDAL's per-dataset mask band (an
      internal or ``.msk`` mask, as in many COGs) is non-zero;
    * with a nodata value: at least ONE chosen band differs from it (GDAL's own
      dataset-mask rule, the union of band masks; checked against rasterio's
      ``dataset_mask`` on RGB.byte.tif, whose per-band masks differ from it);
    * for floating-point data: every chosen band is finite.
    Pixels outside the scene are invalid; invalid pixels are 0 in ``rgb``.

Stretch (non-uint8 data)
    One scene-wide ``(lo, hi)`` pair shared by all three bands, so colour balance is kept
    and no window is normalised on its own (per-tile normalisation makes seams). It is
    the user's ``stretch`` or else the 2nd and 98th percentiles of the valid pixels of all
    chosen bands, pooled, in one decimated read whose long side is about 512 px (GDAL
    serves it from the matching overview when the file has one). A user stretch is also
    applied to uint8 data. Per pixel, in float32 (float64 for 32/64-bit inputs)::

        x = (value - lo) * (255 / (hi - lo));  x = clip(x, 0, 255);  out = uint8(floor(x + 0.5))
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine

from workers.errors import UserError

log = logging.getLogger(__name__)

#: Long side (px) of the decimated read that estimates the stretch.
STRETCH_SAMPLE_LONG_SIDE = 512
#: Percentiles of the automatic stretch.
STRETCH_PERCENTILES = (2.0, 98.0)
#: Open datasets kept per thread and process.
_CACHE_SIZE = 8
#: GDAL options for remote (``/vsi*``) files, set at open and around every read unless
#: the environment sets them (timeouts turn a stalled server into a retryable error).
_REMOTE_GDAL_OPTIONS = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "GDAL_HTTP_MAX_RETRY": "3",
    "GDAL_HTTP_RETRY_DELAY": "1",
    "GDAL_HTTP_CONNECTTIMEOUT": "30",
    "GDAL_HTTP_TIMEOUT": "300",
}
_ZARR_MARKERS = ("zarr.json", ".zgroup", ".zarray", ".zmetadata", ".zattrs")


@dataclass
class SceneInfo:
    """What a task needs to read a scene: cheap, picklable, no open handles."""

    height: int
    width: int
    transform: Affine
    crs_wkt: str | None
    gsd: float
    bands: tuple[int, ...]
    mask_band: int | None
    nodata: float | None
    dtype: str
    stretch: tuple[float, float] | None
    identity: str
    uri: str
    variable: str | None = None
    #: GDAL reports a per-dataset mask band (internal or .msk mask) that is not alpha.
    internal_mask: bool = False

    @property
    def is_zarr(self) -> bool:
        return self.variable is not None


class WindowReadError(UserError):
    """Reading a window failed (corrupt tiles, a failed remote request).

    ``window`` is ``((row0, row1), (col0, col1))`` in native pixels. Remote reads
    (``remote`` is True) are worth retrying; otherwise the job fails with this message.
    """

    def __init__(
        self,
        uri: str,
        window: tuple[tuple[int, int], tuple[int, int]],
        cause: BaseException | str,
    ) -> None:
        (r0, r1), (c0, c1) = window
        self.uri = uri
        self.window = ((int(r0), int(r1)), (int(c0), int(c1)))
        detail = _error_text(cause) if isinstance(cause, BaseException) else str(cause)
        #: The failure as text (GDAL's exception objects do not survive pickling).
        self.cause = detail
        super().__init__(
            f"{uri}: could not read rows {r0}:{r1}, cols {c0}:{c1} ({detail}); the file may be "
            "corrupt or a remote read failed: retry, or check the file (gdalinfo -checksum)"
        )

    @property
    def remote(self) -> bool:
        return _is_remote(self.uri)

    def __reduce__(self):
        return (type(self), (self.uri, self.window, self.cause))


# ----------------------------------------------------------------------------- locations


def resolve_uri(uri: str) -> tuple[str, str]:
    """``uri`` -> (kind, path): kind "zarr" or "gdal"; path as the reader opens it.

    Local paths become absolute; ``http(s)://`` -> ``/vsicurl/...``; ``s3://`` ->
    ``/vsis3/...``; ``gs://`` -> ``/vsigs/...``; ``zarr://PATH`` and ``*.zarr`` -> Zarr.
    """
    uri = str(uri)
    if uri.startswith("zarr://"):
        rest = uri[len("zarr://") :]
        return "zarr", rest if "://" in rest else _local(rest)
    is_url = "://" in uri
    if uri.rstrip("/").endswith(".zarr"):
        return "zarr", uri if is_url else _local(uri)
    if uri.startswith(("http://", "https://")):
        return "gdal", "/vsicurl/" + uri
    for scheme, prefix in (("s3://", "/vsis3/"), ("gs://", "/vsigs/")):
        if uri.startswith(scheme):
            return "gdal", prefix + uri[len(scheme) :]
    if uri.startswith("/vsi") or is_url:
        return "gdal", uri
    path = _local(uri)
    if Path(path).is_dir() and any((Path(path) / m).exists() for m in _ZARR_MARKERS):
        return "zarr", path
    return "gdal", path


def _local(path: str) -> str:
    return str(Path(path).expanduser().absolute())


def _is_remote(path: str) -> bool:
    return (path.startswith("/vsi") and not path.startswith("/vsimem/")) or "://" in path


def _gdal_env(path: str):
    if _is_remote(path):
        import rasterio

        return rasterio.Env(
            **{k: v for k, v in _REMOTE_GDAL_OPTIONS.items() if k not in os.environ}
        )
    return contextlib.nullcontext()


def _error_text(exc: BaseException) -> str:
    """One line from an exception, preferring GDAL's own message behind rasterio's."""
    texts = []
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen and len(texts) < 4:
        seen.add(id(exc))
        text = " ".join(str(exc).split())
        if text and "See previous exception" not in text:
            texts.append(text)
        exc = exc.__cause__ or exc.__context__
    return texts[0] if texts else "unknown error"


# ----------------------------------------------------------------------------- opening


def open_scene(
    uri: str,
    bands: tuple[int, ...] | None = None,
    stretch: tuple[float, float] | None = None,
    variable: str | None = None,
) -> SceneInfo:
    """Metadata of a scene (and its stretch for non-uint8 data); see the module docstring."""
    if bands is not None:
        bands = tuple(int(b) for b in bands)
        if len(bands) not in (1, 3):
            raise UserError(
                f"--bands {','.join(map(str, bands))}: give 3 bands (R,G,B) or 1 (grey), "
                "1-based, e.g. --bands 3,2,1"
            )
    if stretch is not None:
        lo, hi = (float(v) for v in stretch)
        if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
            raise UserError(f"--stretch {lo},{hi}: needs finite lo < hi, e.g. --stretch 0,3000")
        stretch = (lo, hi)
    kind, path = resolve_uri(uri)
    if kind == "gdal" and not _is_remote(path) and not Path(path).exists():
        raise UserError(f"{uri}: no such file; pass the path of a GeoTIFF/COG or a .zarr store")
    if kind == "zarr" and "://" not in path and not Path(path).exists():
        raise UserError(f"{uri}: no such file or Zarr store; check the path")
    if kind == "zarr":
        scene = _open_zarr(uri, path, bands, variable)
    else:
        scene = _open_gdal(uri, path, bands)
    if scene.crs_wkt is None:
        log.warning("%s: no CRS; outputs will be in pixel coordinates", uri)
    if stretch is not None:
        scene.stretch = stretch
    elif scene.dtype != "uint8":
        scene.stretch = _estimate_stretch(scene)
        log.info(
            "%s: %s data, scene-wide stretch %g..%g (2nd..98th percentile) -> 0..255",
            uri,
            scene.dtype,
            *scene.stretch,
        )
    return scene


def _choose_bands(
    uri: str, count: int, requested: tuple[int, ...] | None, interp: list[str] | None
) -> tuple[tuple[int, ...], int | None]:
    """(bands, mask_band) from the band count and colour interpretation names."""
    if count < 1:
        raise UserError(f"{uri}: the scene has no bands; pass a raster with 1, 3 or 4 bands")
    interp = interp or ["undefined"] * count
    alpha = next((i + 1 for i, name in enumerate(interp) if name == "alpha"), None)
    if requested is not None:
        for b in requested:
            if not 1 <= b <= count:
                raise UserError(
                    f"--bands: band {b} is out of range; {uri} has {count} band"
                    f"{'s' if count != 1 else ''} (1..{count})"
                )
        chosen = requested * 3 if len(requested) == 1 else requested
    elif count > 4:
        raise UserError(
            f"{uri} has {count} bands; pass --bands R,G,B (1-based), e.g. --bands 3,2,1"
        )
    elif count == 1:
        if interp[0] == "palette":
            log.warning("%s: a paletted band is read as grey values, not its colours", uri)
        chosen = (1, 1, 1)
    elif count == 2:
        if alpha != 2:
            raise UserError(
                f"{uri} has 2 bands and the second is not alpha; pass --bands 1 (grey) or --bands 2"
            )
        chosen = (1, 1, 1)
    else:
        rgb = [
            interp.index(name) + 1 if name in interp else None for name in ("red", "green", "blue")
        ]
        chosen = tuple(rgb) if None not in rgb else (1, 2, 3)
    mask_band = alpha if alpha is not None and alpha not in chosen else None
    return tuple(int(b) for b in chosen), mask_band


def _gsd(uri: str, transform: Affine) -> float:
    xres = math.hypot(transform.a, transform.d)
    yres = math.hypot(transform.b, transform.e)
    if xres <= 0 or yres <= 0:
        raise UserError(f"{uri}: degenerate geotransform {tuple(transform)[:6]}; fix the file")
    if abs(xres - yres) > 0.01 * max(xres, yres):
        log.warning("%s: non-square pixels (%g x %g); using their mean as the GSD", uri, xres, yres)
    return (xres + yres) / 2


def _open_gdal(uri: str, path: str, bands: tuple[int, ...] | None) -> SceneInfo:
    import rasterio
    from rasterio.enums import MaskFlags
    from rasterio.errors import RasterioError

    try:
        with _gdal_env(path), warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            ds = rasterio.open(path)
    except RasterioError as exc:
        text = _error_text(exc)
        if _is_remote(path):
            raise UserError(
                f"{uri}: could not open it ({text}); check the URL and, for s3, credentials"
            ) from None
        raise UserError(
            f"{uri}: not a raster GDAL can read ({text}); pass a GeoTIFF/COG or a .zarr store"
        ) from None
    with ds:
        count = ds.count
        if count < 1:
            hint = (
                f" (it has subdatasets: {', '.join(ds.subdatasets[:5])})" if ds.subdatasets else ""
            )
            raise UserError(
                f"{uri}: the scene has no bands{hint}; pass a raster with 1, 3 or 4 bands"
            )
        interp = [ci.name for ci in ds.colorinterp]
        chosen, mask_band = _choose_bands(uri, count, bands, interp)
        dtypes = {ds.dtypes[b - 1] for b in chosen}
        if len(dtypes) != 1:
            raise UserError(f"{uri}: bands {chosen} have different types {sorted(dtypes)}")
        dtype = dtypes.pop()
        if np.dtype(dtype).kind not in "uif":
            raise UserError(f"{uri}: {dtype} pixels are not supported; pass integer or float data")
        nodata = ds.nodatavals[chosen[0] - 1]
        flags = ds.mask_flag_enums[chosen[0] - 1]
        internal = (
            mask_band is None
            and MaskFlags.per_dataset in flags
            and MaskFlags.alpha not in flags
            and MaskFlags.nodata not in flags
        )
        transform = ds.transform
        crs_wkt = ds.crs.to_wkt() if ds.crs else None
        if _is_remote(path):
            meta = repr(
                (ds.width, ds.height, ds.count, ds.dtypes, tuple(transform), crs_wkt,
                 ds.block_shapes, ds.overviews(1), ds.nodatavals, ds.compression)
            )  # fmt: skip
            identity = f"{path}|meta-sha256={hashlib.sha256(meta.encode()).hexdigest()[:16]}"
        else:
            st = os.stat(path)
            identity = f"{path}|size={st.st_size}|mtime_ns={st.st_mtime_ns}"
        return SceneInfo(
            height=ds.height,
            width=ds.width,
            transform=transform,
            crs_wkt=crs_wkt,
            gsd=_gsd(uri, transform),
            bands=chosen,
            mask_band=mask_band,
            nodata=None if nodata is None else float(nodata),
            dtype=str(dtype),
            stretch=None,
            identity=identity,
            uri=path,
            variable=None,
            internal_mask=internal,
        )


def _zarr_open_dataset(path: str):
    import rioxarray  # noqa: F401  (registers the .rio accessor)
    import xarray as xr

    return xr.open_dataset(
        path,
        engine="zarr",
        chunks=None,  # lazy backend arrays: no Dask graph inside a Dask task, no caching
        cache=False,
        mask_and_scale=False,  # keep the stored dtype; nodata comes from _FillValue
        decode_coords="all",  # grid_mapping variables become coordinates (CRS survives)
    )


def _zarr_variable(uri: str, ds: Any, variable: str | None) -> Any:
    names = [str(n) for n in ds.data_vars]
    if variable is not None:
        if variable not in ds.data_vars:
            raise UserError(
                f"{uri} has no variable {variable!r}; its variables are: "
                f"{', '.join(names) or 'none'}; pass --variable NAME"
            )
        return ds[variable]
    candidates = [n for n in names if ds[n].ndim == 3] or [n for n in names if ds[n].ndim == 2]
    if len(candidates) != 1:
        raise UserError(
            f"{uri}: cannot tell which variable is the image (variables: "
            f"{', '.join(names) or 'none'}); pass --variable NAME"
        )
    return ds[candidates[0]]


def _zarr_dims(uri: str, da: Any) -> tuple[str | None, str, str]:
    """(band_dim or None, y_dim, x_dim) of a 2-D or 3-D variable."""
    if da.ndim not in (2, 3):
        raise UserError(
            f"{uri}: variable {da.name!r} has dims {da.dims}; need (band, y, x) or (y, x)"
        )
    try:
        y_dim, x_dim = da.rio.y_dim, da.rio.x_dim
    except Exception:
        y_dim, x_dim = da.dims[-2], da.dims[-1]
    rest = [d for d in da.dims if d not in (y_dim, x_dim)]
    return (rest[0] if rest else None), str(y_dim), str(x_dim)


def _open_zarr(
    uri: str, path: str, bands: tuple[int, ...] | None, variable: str | None
) -> SceneInfo:
    try:
        ds = _zarr_open_dataset(path)
    except Exception as exc:
        raise UserError(
            f"{uri}: not a readable Zarr store ({_error_text(exc)}); pass a Zarr store "
            "with a (band, y, x) variable"
        ) from None
    with ds, warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)  # rioxarray's Affine use
        da = _zarr_variable(uri, ds, variable)
        band_dim, y_dim, x_dim = _zarr_dims(uri, da)
        count = da.sizes[band_dim] if band_dim else 1
        chosen, mask_band = _choose_bands(uri, count, bands, None)
        dtype = np.dtype(da.dtype)
        if dtype.kind not in "uif":
            raise UserError(f"{uri}: {dtype} pixels are not supported; pass integer or float data")
        crs = da.rio.crs
        try:
            transform = da.rio.transform()
        except Exception:
            log.warning("%s: no geotransform in the Zarr store; using pixel coordinates", uri)
            transform = Affine.identity()
        nodata = da.rio.nodata
        identity = _zarr_identity(path, str(da.name))
        return SceneInfo(
            height=int(da.sizes[y_dim]),
            width=int(da.sizes[x_dim]),
            transform=transform,
            crs_wkt=crs.to_wkt() if crs else None,
            gsd=_gsd(uri, transform),
            bands=chosen,
            mask_band=mask_band,
            nodata=None if nodata is None else float(nodata),
            dtype=str(dtype),
            stretch=None,
            identity=identity,
            uri=path,
            variable=str(da.name),
        )


def _zarr_identity(path: str, variable: str) -> str:
    """Path + size/mtime of the store's and the variable's metadata files (chunks not walked)."""
    if "://" in path:
        return f"{path}|{variable}"
    parts = [path, variable]
    for folder in (Path(path), Path(path) / variable):
        for marker in _ZARR_MARKERS:
            meta = folder / marker
            if meta.is_file():
                st = meta.stat()
                parts.append(f"{meta.relative_to(path)}:{st.st_size}:{st.st_mtime_ns}")
    return "|".join(parts)


# ----------------------------------------------------------------------------- handles


class _Handles(threading.local):
    """Open datasets of this thread, dropped after a fork (rasterio handles are not
    thread-safe, and a forked child must not share file offsets with its parent)."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.items: OrderedDict[tuple, Any] = OrderedDict()


_HANDLES = _Handles()


def _cached(key: tuple, opener) -> Any:
    if _HANDLES.pid != os.getpid():
        _HANDLES.items = OrderedDict()
        _HANDLES.pid = os.getpid()
    items = _HANDLES.items
    if key in items:
        items.move_to_end(key)
        return items[key]
    handle = opener()
    items[key] = handle
    while len(items) > _CACHE_SIZE:
        _, old = items.popitem(last=False)
        _close(old)
    return handle


def _forget(key: tuple) -> None:
    handle = _HANDLES.items.pop(key, None)
    if handle is not None:
        _close(handle)


def _close(handle: Any) -> None:
    with contextlib.suppress(Exception):
        (handle[0] if isinstance(handle, tuple) else handle).close()


def close_cached_datasets() -> None:
    """Close this thread's cached datasets (tests; long-lived processes)."""
    while _HANDLES.items:
        _close(_HANDLES.items.popitem()[1])


def _handle_key(scene: SceneInfo) -> tuple:
    return (scene.uri, scene.identity, scene.variable)


def _gdal_handle(scene: SceneInfo):
    import rasterio

    def opener():
        with _gdal_env(scene.uri), warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            return rasterio.open(scene.uri)

    return _cached(_handle_key(scene), opener)


def _zarr_handle(scene: SceneInfo):
    def opener():
        ds = _zarr_open_dataset(scene.uri)
        da = ds[scene.variable]
        return (ds, da, *_zarr_dims(scene.uri, da))

    return _cached(_handle_key(scene), opener)


# ----------------------------------------------------------------------------- pixels


def _unique_bands(scene: SceneInfo) -> tuple[list[int], list[int]]:
    """(distinct bands in first-use order, position of R, G, B in that list)."""
    unique = list(dict.fromkeys(scene.bands))
    return unique, [unique.index(b) for b in scene.bands]


def _valid_mask(scene: SceneInfo, values: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """The module's valid rule for (k, h, w) values and an alpha/internal mask (h, w)."""
    valid = np.ones(values.shape[1:], dtype=bool) if mask is None else mask != 0
    if scene.nodata is not None:
        if math.isnan(scene.nodata):
            valid &= (~np.isnan(values)).any(axis=0)
        elif _representable(scene.nodata, values.dtype):
            valid &= (values != values.dtype.type(scene.nodata)).any(axis=0)
    if values.dtype.kind == "f":
        valid &= np.isfinite(values).all(axis=0)
    return valid


def _representable(value: float, dtype: np.dtype) -> bool:
    """Whether some pixel of ``dtype`` can equal ``value`` (nodata -9999 on uint16 cannot)."""
    if dtype.kind == "f":
        return True
    info = np.iinfo(dtype)
    return float(value).is_integer() and info.min <= value <= info.max


def _read_gdal(scene: SceneInfo, r0: int, r1: int, c0: int, c1: int, out_shape=None):
    """(values (k, h, w), valid (h, w)) of the distinct bands, window or decimated read."""
    from rasterio.enums import Resampling
    from rasterio.windows import Window

    ds = _gdal_handle(scene)
    unique, _ = _unique_bands(scene)
    indexes = unique + ([scene.mask_band] if scene.mask_band else [])
    window = Window(c0, r0, c1 - c0, r1 - r0)
    shape = None if out_shape is None else (len(indexes), *out_shape)
    with _gdal_env(scene.uri):
        values = ds.read(
            indexes=indexes, window=window, out_shape=shape, resampling=Resampling.nearest
        )
        mask = None
        if scene.mask_band:
            values, mask = values[:-1], values[-1]
        elif scene.internal_mask:
            mshape = None if out_shape is None else tuple(out_shape)
            mask = ds.read_masks(
                unique[0], window=window, out_shape=mshape, resampling=Resampling.nearest
            )
    return values, _valid_mask(scene, values, mask)


def _read_zarr(scene: SceneInfo, r0: int, r1: int, c0: int, c1: int, step: int = 1):
    _, da, band_dim, y_dim, x_dim = _zarr_handle(scene)
    unique, _ = _unique_bands(scene)
    sel = {y_dim: slice(r0, r1, step), x_dim: slice(c0, c1, step)}
    if band_dim is not None:
        sel[band_dim] = [b - 1 for b in unique]
        values = da.isel(sel).transpose(band_dim, y_dim, x_dim).values
    else:
        values = da.isel(sel).transpose(y_dim, x_dim).values[None]
    return values, _valid_mask(scene, values, None)


def stretch_to_uint8(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """The scene stretch: (value - lo) * 255 / (hi - lo), clipped, rounded half up; NaN -> 0."""
    work = np.float64 if values.dtype.itemsize > 2 and values.dtype != np.float32 else np.float32
    x = values.astype(work)
    x -= work(lo)
    x *= work(255.0 / (hi - lo))
    np.clip(x, 0, 255, out=x)
    x += work(0.5)
    np.floor(x, out=x)
    x[np.isnan(x)] = 0
    return x.astype(np.uint8)


def _to_rgb(scene: SceneInfo, values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    _, positions = _unique_bands(scene)
    if scene.stretch is not None:
        values = stretch_to_uint8(values, *scene.stretch)
    elif values.dtype != np.uint8:
        values = np.clip(np.nan_to_num(values), 0, 255).astype(np.uint8)
    rgb = np.ascontiguousarray(np.moveaxis(values[positions], 0, -1))
    rgb[~valid] = 0
    return rgb


def read_window(
    scene: SceneInfo, row0: int, col0: int, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """(rgb (height, width, 3) uint8, valid (height, width) bool) of a native-pixel window.

    The window may hang over the scene's edges: only the intersecting part is read (a
    plain windowed read) and the rest is zeros / invalid. A failed read raises
    :class:`WindowReadError`.
    """
    row0, col0, height, width = int(row0), int(col0), int(height), int(width)
    if height < 0 or width < 0:
        raise ValueError(f"negative window size {height}x{width}")
    rgb = np.zeros((height, width, 3), dtype=np.uint8)
    valid = np.zeros((height, width), dtype=bool)
    r0, r1 = max(row0, 0), min(row0 + height, scene.height)
    c0, c1 = max(col0, 0), min(col0 + width, scene.width)
    if r1 <= r0 or c1 <= c0:
        return rgb, valid
    failure: Exception | None = None
    try:
        reader = _read_zarr if scene.is_zarr else _read_gdal
        values, ok = reader(scene, r0, r1, c0, c1)
    except UserError:
        raise
    except Exception as exc:
        failure = exc
    if failure is not None:
        # Raised outside the except block and holding only text: GDAL's exceptions in
        # __cause__/__context__ do not unpickle, and Dask ships this error between processes.
        _forget(_handle_key(scene))  # a retry re-opens (new connection, fresh state)
        window = ((row0, row0 + height), (col0, col0 + width))
        raise WindowReadError(scene.uri, window, failure)
    inner = (slice(r0 - row0, r1 - row0), slice(c0 - col0, c1 - col0))
    rgb[inner] = _to_rgb(scene, values, ok)
    valid[inner] = ok
    return rgb, valid


def _estimate_stretch(scene: SceneInfo) -> tuple[float, float]:
    """2nd/98th percentiles of the valid pixels of a ~512 px decimated read, all bands pooled."""
    long_side = max(scene.height, scene.width)
    factor = max(1, long_side // STRETCH_SAMPLE_LONG_SIDE)
    try:
        if scene.is_zarr:
            values, ok = _read_zarr(scene, 0, scene.height, 0, scene.width, step=factor)
        else:
            shape = (-(-scene.height // factor), -(-scene.width // factor))
            values, ok = _read_gdal(scene, 0, scene.height, 0, scene.width, out_shape=shape)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(
            f"{scene.uri}: could not read a decimated sample for the stretch "
            f"({_error_text(exc)}); pass --stretch lo,hi or check the file"
        ) from None
    sample = values[:, ok].astype(np.float64).ravel()
    if sample.size == 0:
        dtype = np.dtype(scene.dtype)
        lo, hi = (
            (float(np.iinfo(dtype).min), float(np.iinfo(dtype).max))
            if dtype.kind in "ui"
            else (0.0, 1.0)
        )
        log.warning(
            "%s: no valid pixels in the stretch sample; using %g..%g (pass --stretch lo,hi)",
            scene.uri,
            lo,
            hi,
        )
        return lo, hi
    lo, hi = (float(v) for v in np.percentile(sample, STRETCH_PERCENTILES))
    if not hi > lo:
        hi = lo + 1.0
    return lo, hi
