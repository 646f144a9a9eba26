"""`export --cog`: the labels as a Cloud-Optimised GeoTIFF (SPEC 3.3).

labels -> a tiled GeoTIFF (windowed writes, bounded memory) -> ``mode`` (or ``nearest``)
overviews -> GDAL's COG driver, which rewrites it in COG layout (IFDs first, overviews
before the full-resolution tiles), checked by rio-cogeo's validator. The class colours
become the GDAL colour table, 255 is nodata, the CRS and transform are the store's own.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine

from reattn_batch.outputs.files import TILE, check_export, temp_sibling, window_step, windows
from reattn_batch.store import NODATA, LabelStore, label_store
from reattn_batch.workers.errors import InputError

OVERVIEW_RESAMPLING = ("mode", "nearest")
COMPRESSIONS = ("deflate", "zstd")


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
    store: LabelStore | str | os.PathLike,
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
        raise InputError(f"overview resampling {resampling!r}: choose mode or nearest")
    if compress not in COMPRESSIONS:
        raise InputError(f"compression {compress!r}: choose deflate or zstd")
    ls = label_store(store)
    out = check_export(ls, out_path, overwrite, "COG")
    georef: dict[str, Any] = {}
    if ls.crs_wkt is not None:
        georef["crs"] = CRS.from_wkt(ls.crs_wkt)
    if ls.crs_wkt is not None or ls.transform != Affine.identity():
        georef["transform"] = ls.transform

    tmp = temp_sibling(out, ".tif")
    tmp_cog = temp_sibling(out, ".cog.tif")
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
                for r0, c0, h, w in windows(ls.height, ls.width, window_step(ls.chunk)):
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
        raise InputError(f"cannot write the COG {out} ({exc.strerror or exc})") from None
    finally:
        for path in (tmp, tmp_cog):
            path.unlink(missing_ok=True)
    return out


def cog_problems(path: str | os.PathLike) -> list[str]:
    """What keeps ``path`` from being a valid COG, by rio-cogeo's validator (empty: valid)."""
    from rio_cogeo.cogeo import cog_validate

    valid, errors, _ = cog_validate(str(path), quiet=True)
    return [] if valid else errors or ["rio-cogeo: not a valid COG"]
