"""Where a scene lives: a user's location -> what a reader opens, and GDAL's settings for
remote files (SPEC 3.2).

``http(s)://`` becomes ``/vsicurl/...``, ``s3://`` ``/vsis3/...``, ``gs://`` ``/vsigs/...``;
``zarr://PATH``, ``*.zarr`` and folders holding Zarr metadata are Zarr stores; local paths
become absolute. A STAC Item (``*.json``, local or http(s)) stands for one of its
assets (``scene/stac_item.py``): :func:`resolve_scene` is where a SCENE is resolved.
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path
from typing import Any

from reattn_batch.paths import holds_zarr
from reattn_batch.scene.href_policy import is_url
from reattn_batch.workers.environment import EnvironmentSettings
from reattn_batch.workers.errors import InputError

#: GDAL options for remote (``/vsi*``) files, set at open and around every read (on the
#: driver and on the workers) unless the environment sets them: a server that errors is
#: retried with backoff (GDAL retries 429 and 5xx replies itself; blocks/reading.py retries
#: what still fails), and the timeouts turn a stalled server into a failed, retried read.
#: GDAL_HTTP_LOW_SPEED_TIME (seconds with less than GDAL_HTTP_LOW_SPEED_LIMIT bytes/s) is
#: $REATTN_BATCH_READ_TIMEOUT (:func:`remote_gdal_options`).
REMOTE_GDAL_OPTIONS = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "GDAL_HTTP_MAX_RETRY": "3",
    "GDAL_HTTP_RETRY_DELAY": "1",
    "GDAL_HTTP_CONNECTTIMEOUT": "30",  # seconds to connect
    "GDAL_HTTP_TIMEOUT": "300",  # seconds for a whole request
    "GDAL_HTTP_LOW_SPEED_LIMIT": "1",
}


def resolve_scene(uri: str, asset: str | None = None):
    """A user's SCENE -> (location of the raster, the ``StacScene`` or None).

    A STAC Item is replaced by the asset it names (``asset``, else its RGB/visual one);
    any other SCENE is its own location, and ``asset`` is refused (UserError)."""
    from reattn_batch.scene.stac_item import is_stac_item, resolve_item

    if is_stac_item(uri):
        item = resolve_item(uri, asset)
        return item.asset_href, item
    if asset is not None:
        raise InputError(f"asset={asset} needs a STAC Item (.json file or URL) as SCENE; got {uri}")
    return uri, None


def resolve_uri(uri: str) -> tuple[str, str]:
    """``uri`` -> (kind, path): kind "zarr" or "gdal"; path as the reader opens it.

    Local paths become absolute; ``http(s)://`` -> ``/vsicurl/...``; ``s3://`` ->
    ``/vsis3/...``; ``gs://`` -> ``/vsigs/...``; ``zarr://PATH`` and ``*.zarr`` -> Zarr.
    """
    uri = str(uri)
    if uri.startswith("zarr://"):
        rest = uri[len("zarr://") :]
        return "zarr", rest if "://" in rest else local_path(rest)
    has_scheme = "://" in uri
    if uri.rstrip("/").endswith(".zarr"):
        return "zarr", uri if has_scheme else local_path(uri)
    if is_url(uri):  # the scheme in lower case, as GDAL matches it
        scheme = uri.split(":", 1)[0]
        return "gdal", "/vsicurl/" + scheme.lower() + uri[len(scheme) :]
    for scheme, prefix in (("s3://", "/vsis3/"), ("gs://", "/vsigs/")):
        if uri.startswith(scheme):
            return "gdal", prefix + uri[len(scheme) :]
    if uri.startswith("/vsi") or has_scheme:
        return "gdal", uri
    path = local_path(uri)
    if holds_zarr(path):
        return "zarr", path
    return "gdal", path


def local_path(path: str) -> str:
    return str(Path(path).expanduser().absolute())


def is_remote(path: str) -> bool:
    return (path.startswith("/vsi") and not path.startswith("/vsimem/")) or "://" in path


def remote_gdal_options() -> dict[str, str]:
    """The GDAL options of remote reads: :data:`REMOTE_GDAL_OPTIONS` and the stall timeout
    (whole seconds, at least 1), less those the environment sets (the user's win)."""
    stall = EnvironmentSettings.from_env("read_timeout").read_timeout
    options = REMOTE_GDAL_OPTIONS | {"GDAL_HTTP_LOW_SPEED_TIME": str(max(1, math.ceil(stall)))}
    return {k: v for k, v in options.items() if k not in os.environ}


def fsspec_options(path: str) -> dict[str, Any]:
    """fsspec's storage options for a remote Zarr at ``path``: over http(s), aiohttp's
    timeouts, as GDAL's (connect, a whole request) and no data for
    $REATTN_BATCH_READ_TIMEOUT s (aiohttp's own default: 5 minutes in all). Other
    protocols keep their file system's own bounds (s3fs, gcsfs)."""
    if not is_url(path):
        return {}
    try:
        import aiohttp
    except ImportError:  # fsspec says what to install
        return {}
    timeout = aiohttp.ClientTimeout(
        total=float(REMOTE_GDAL_OPTIONS["GDAL_HTTP_TIMEOUT"]),
        sock_connect=float(REMOTE_GDAL_OPTIONS["GDAL_HTTP_CONNECTTIMEOUT"]),
        sock_read=EnvironmentSettings.from_env("read_timeout").read_timeout,
    )
    return {"client_kwargs": {"timeout": timeout}}


def gdal_env(path: str):
    """A ``rasterio.Env`` of :func:`remote_gdal_options` for a remote ``path``."""
    if is_remote(path):
        import rasterio

        return rasterio.Env(**remote_gdal_options())
    return contextlib.nullcontext()


def error_text(exc: BaseException) -> str:
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
