"""GDAL's HTTP headers of a remote object (``VSIGetFileMetadata(path, "HEADERS")``).

rasterio has no binding for it, so it is called through ctypes on the very libgdal that
rasterio loaded (found in ``/proc/self/maps``, else next to rasterio as its wheel bundles
it, else the system's). GDAL makes the request itself, with the credentials and options it
reads the raster with, so it answers for every network file system GDAL reads:
``/vsis3/``, ``/vsigs/``, ``/vsiaz/``, ``/vsiadls/``, ``/vsioss/``, ``/vsiswift/`` and
``/vsicurl/`` alike, private buckets included. Callers hold the GDAL environment
(``reattn_batch.scene.uri.gdal_env``) around it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import glob
import os
from pathlib import Path


@functools.cache
def _libgdal() -> ctypes.CDLL | None:
    """rasterio's libgdal, or None where it cannot be found (then no headers)."""
    import rasterio._base  # noqa: F401  (loads libgdal into this process)

    candidates: list[str] = []
    maps = Path("/proc/self/maps")
    if maps.is_file():
        for line in maps.read_text().splitlines():
            path = line.split()[-1] if line.split() else ""
            if "libgdal" in Path(path).name and path not in candidates:
                candidates.append(path)
    here = os.path.dirname(rasterio._base.__file__)
    for folder in (here + ".libs", os.path.join(here, ".dylibs")):
        candidates += sorted(glob.glob(os.path.join(folder, "libgdal*")))
    system = ctypes.util.find_library("gdal")
    candidates += [system] if system else []
    for candidate in candidates:
        try:
            lib = ctypes.CDLL(candidate)
            lib.VSIGetFileMetadata.restype = ctypes.POINTER(ctypes.c_char_p)
            lib.VSIGetFileMetadata.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p]
            lib.CSLDestroy.argtypes = [ctypes.POINTER(ctypes.c_char_p)]
            lib.VSICurlPartialClearCache.argtypes = [ctypes.c_char_p]
            return lib
        except (OSError, AttributeError):
            continue
    return None


def vsi_headers(path: str) -> dict[str, str]:
    """The HTTP response headers GDAL got for the remote object ``path`` (a /vsi... path),
    as ``{name: value}``; empty where GDAL has none (not a network path, no libgdal)."""
    lib = _libgdal()
    if lib is None:
        return {}
    lib.VSICurlPartialClearCache(path.encode())  # ask the server, not this process's cache
    items = lib.VSIGetFileMetadata(path.encode(), b"HEADERS", None)
    if not items:
        return {}
    headers: dict[str, str] = {}
    try:
        i = 0
        while items[i]:
            name, _, value = items[i].decode("utf-8", "replace").partition("=")
            headers[name.strip()] = value.strip()
            i += 1
    finally:
        lib.CSLDestroy(items)
    return headers
