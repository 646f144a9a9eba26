"""The scene's pixel policy (SPEC 3.2): which bands are R, G, B, which pixels are valid,
and the one scene-wide stretch of non-uint8 data. Pure functions of arrays and metadata;
the backends (``gdal_backend``, ``zarr_backend``) call them.

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

import logging
import math

import numpy as np
from affine import Affine

from reattn_batch.scene.info import SceneInfo
from reattn_batch.workers.errors import InputError

log = logging.getLogger("reattn_batch.scene")

#: Long side (px) of the decimated read that estimates the stretch.
STRETCH_SAMPLE_LONG_SIDE = 512


#: Percentiles of the automatic stretch.
STRETCH_PERCENTILES = (2.0, 98.0)


def choose_bands(
    uri: str, count: int, requested: tuple[int, ...] | None, interp: list[str] | None
) -> tuple[tuple[int, ...], int | None]:
    """(bands, mask_band) from the band count and colour interpretation names."""
    if count < 1:
        raise InputError(f"{uri}: the scene has no bands; pass a raster with 1, 3 or 4 bands")
    interp = interp or ["undefined"] * count
    alpha = next((i + 1 for i, name in enumerate(interp) if name == "alpha"), None)
    if requested is not None:
        for b in requested:
            if not 1 <= b <= count:
                raise InputError(
                    f"`bands`: band {b} is out of range; {uri} has {count} band"
                    f"{'s' if count != 1 else ''} (1..{count})"
                )
        chosen = requested * 3 if len(requested) == 1 else requested
    elif count > 4:
        raise InputError(f"{uri} has {count} bands; pass bands=R,G,B (1-based), e.g. bands=3,2,1")
    elif count == 1:
        if interp[0] == "palette":
            log.warning("%s: a paletted band is read as grey values, not its colours", uri)
        chosen = (1, 1, 1)
    elif count == 2:
        if alpha != 2:
            raise InputError(
                f"{uri} has 2 bands and the second is not alpha; pass bands=1 (grey) or bands=2"
            )
        chosen = (1, 1, 1)
    else:
        rgb = [
            interp.index(name) + 1 if name in interp else None for name in ("red", "green", "blue")
        ]
        chosen = tuple(rgb) if None not in rgb else (1, 2, 3)
    mask_band = alpha if alpha is not None and alpha not in chosen else None
    return tuple(int(b) for b in chosen), mask_band


def pixel_size(uri: str, transform: Affine) -> float:
    """The scene's GSD in CRS units (degrees for a geographic CRS): the mean side of a
    pixel. A rotated or sheared grid is refused (:func:`check_north_up`)."""
    check_north_up(uri, transform)
    xres, yres = abs(transform.a), abs(transform.e)  # b = d = 0: the sides are a and e
    if xres <= 0 or yres <= 0:
        raise InputError(f"{uri}: degenerate geotransform {tuple(transform)[:6]}; fix the file")
    if abs(xres - yres) > 0.01 * max(xres, yres):
        log.warning("%s: non-square pixels (%g x %g); using their mean as the GSD", uri, xres, yres)
    return (xres + yres) / 2


def check_north_up(uri: str, transform: Affine) -> None:
    """Refuse a rotated or sheared geotransform (b or d not 0): the label store describes
    its grid by x/y pixel-centre coordinates, which GDAL and xarray read as an axis-aligned
    grid, so its labels would be placed wrongly. (North-up and south-up grids are fine.)"""
    if transform.b != 0 or transform.d != 0:
        raise InputError(
            f"{uri}: the geotransform is rotated or sheared {tuple(transform)[:6]}, which the "
            "label store cannot describe; warp it to a north-up grid first, e.g. "
            "`gdalwarp -t_srs EPSG:XXXX in.tif out.tif` (its own CRS), and map out.tif"
        )


def unique_bands(scene: SceneInfo) -> tuple[list[int], list[int]]:
    """(distinct bands in first-use order, position of R, G, B in that list)."""
    unique = list(dict.fromkeys(scene.bands))
    return unique, [unique.index(b) for b in scene.bands]


def valid_mask(scene: SceneInfo, values: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
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


def to_rgb(scene: SceneInfo, values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    _, positions = unique_bands(scene)
    if scene.stretch is not None:
        values = stretch_to_uint8(values, *scene.stretch)
    elif values.dtype != np.uint8:
        values = np.clip(np.nan_to_num(values), 0, 255).astype(np.uint8)
    rgb = np.ascontiguousarray(np.moveaxis(values[positions], 0, -1))
    rgb[~valid] = 0
    return rgb
