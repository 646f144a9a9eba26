"""What a scene's identity sees (SPEC 3.5): enough of its content that ``--resume`` and
regional re-runs notice a changed input, not only a changed path, at a cost of a few MiB
read per file whatever its size.

- a local file: real path, size, mtime_ns and the sha256 of a sample of its bytes (the
  first and last :data:`EDGE` bytes, holding a GeoTIFF's header and tile index, and
  :data:`STRIDES` blocks of :data:`BLOCK` bytes spread evenly in between);
- the files GDAL reads with it: sidecars (``.ovr``, ``.msk``, ``.aux.xml``) and a VRT's
  sources (rasterio's ``ds.files``), with the same recipe;
- an HTTP(S) object: its ``ETag``, ``Last-Modified`` and ``Content-Length`` (a HEAD
  request), or, where a server sends none of them, the metadata GDAL read;
- a local Zarr variable: its metadata files and the listing of its chunk files (name,
  size, mtime_ns), plus the content sample of up to :data:`STRIDES` chunk files.
"""

from __future__ import annotations

import hashlib
import os
import urllib.request
from collections.abc import Iterable
from pathlib import Path

#: Bytes hashed at each end of a file.
EDGE = 1 << 20
#: Strided blocks hashed between the ends, and their size in bytes.
STRIDES = 16
BLOCK = 64 << 10
#: Sidecar suffixes GDAL picks up next to a raster.
SIDECARS = (".ovr", ".msk", ".aux.xml")
#: Seconds for the HEAD request of a remote object.
HEAD_TIMEOUT = 30


def file_identity(path: str | os.PathLike) -> str:
    """``realpath|size=..|mtime_ns=..|sample=<sha256 of the sampled bytes>``."""
    real = os.path.realpath(path)
    st = os.stat(real)
    digest = hashlib.sha256()
    with open(real, "rb") as f:
        size = st.st_size
        if size <= 2 * EDGE + STRIDES * BLOCK:
            digest.update(f.read())
        else:
            offsets = [0, *(EDGE + i * (size - 2 * EDGE) // STRIDES for i in range(STRIDES))]
            for offset, length in [(o, EDGE if o == 0 else BLOCK) for o in offsets] + [
                (size - EDGE, EDGE)
            ]:
                f.seek(offset)
                digest.update(f.read(length))
    return f"{real}|size={st.st_size}|mtime_ns={st.st_mtime_ns}|sample={digest.hexdigest()[:16]}"


def local_raster_identity(path: str, files: Iterable[str]) -> str:
    """The identity of a local raster and every file GDAL reads with it (``files``: the
    dataset's file list, e.g. VRT sources) plus the sidecars next to it."""
    seen = {os.path.realpath(path)}
    parts = [file_identity(path)]
    extra = [*files, *(path + suffix for suffix in SIDECARS)]
    for other in extra:
        if other.startswith("/vsi") or not os.path.isfile(other):
            continue
        real = os.path.realpath(other)
        if real not in seen:
            seen.add(real)
            parts.append(file_identity(real))
    return " + ".join(parts)


def http_headers(url: str) -> dict[str, str]:
    """``ETag``, ``Last-Modified`` and ``Content-Length`` of an HTTP(S) object (HEAD); the
    ones the server does not send, or all on a failed request, are left out."""
    request = urllib.request.Request(url, method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=HEAD_TIMEOUT) as response:  # noqa: S310
            headers = response.headers
    except OSError:
        return {}
    keys = ("ETag", "Last-Modified", "Content-Length")
    return {key: headers[key] for key in keys if headers.get(key)}


def remote_identity(path: str, meta: str) -> str:
    """A remote raster: its validators where the server gives them (HTTP(S)), else the
    sha256 of the metadata GDAL read (``meta``)."""
    url = path.removeprefix("/vsicurl/")
    if url.startswith(("http://", "https://")):
        headers = http_headers(url)
        if "ETag" in headers or "Last-Modified" in headers:
            return f"{path}|" + "|".join(f"{k}={v}" for k, v in sorted(headers.items()))
    return f"{path}|meta-sha256={hashlib.sha256(meta.encode()).hexdigest()[:16]}"


def zarr_identity(path: str, variable: str, markers: Iterable[str]) -> str:
    """A local Zarr variable: its metadata files and chunk files (listing + a sample of
    their bytes); a remote one: its path and variable name only."""
    if "://" in path:
        return f"{path}|{variable}"
    root = Path(path)
    listing = hashlib.sha256()
    for folder in (root, root / variable):
        for marker in markers:
            meta = folder / marker
            if meta.is_file():
                listing.update(file_identity(meta).split("|", 1)[1].encode())
    chunks = sorted(
        p for p in (root / variable).rglob("*") if p.is_file() and not p.name.startswith(".")
    )
    for chunk in chunks:
        st = chunk.stat()
        listing.update(f"{chunk.relative_to(root)}:{st.st_size}:{st.st_mtime_ns};".encode())
    step = max(1, len(chunks) // STRIDES)
    for chunk in chunks[::step][:STRIDES] + chunks[-1:]:
        listing.update(file_identity(chunk).rsplit("|", 1)[1].encode())
    return f"{path}|{variable}|{len(chunks)} chunks|sha256={listing.hexdigest()[:16]}"
