"""What a scene's identity sees (SPEC 3.5): enough of its content that ``--resume`` and
regional re-runs notice a changed input, not only a changed path, at a cost of a few MiB
read per file whatever its size.

- a local file: real path, size, mtime_ns and the sha256 of a sample of its bytes (the
  first and last :data:`EDGE` bytes, holding a GeoTIFF's header and tile index, and
  :data:`STRIDES` blocks of :data:`BLOCK` bytes spread evenly in between);
- the files GDAL reads with it: sidecars (``.ovr``, ``.msk``, ``.aux.xml``) and a VRT's
  sources (rasterio's ``ds.files``), with the same recipe;
- a remote object (S3, GCS, Azure, HTTP(S): any GDAL network path): its ``ETag``,
  ``Last-Modified`` and size as GDAL's own request sees them, with the credentials it
  reads with (``pipeline/scene/_vsi_headers.py``); for an HTTP(S) URL GDAL gave none for,
  a HEAD request; where the server sends no validator, the metadata GDAL read;
- a local Zarr variable: its metadata files and the listing of its chunk files (name,
  size, mtime_ns), plus the content sample of up to :data:`STRIDES` chunk files;
- a remote Zarr variable (any fsspec URL: s3://, gs://, https://, ...): the content of its
  metadata files, the listing of its chunk objects (name, size, ETag or modification time)
  where the store can be listed, and the first :data:`EDGE` bytes of up to
  :data:`STRIDES` chunks.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import urllib.request
from collections.abc import Iterable
from pathlib import Path

from reattn_batch.scene.href_policy import is_url
from reattn_batch.scene.uri import fsspec_options

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


def validators(headers: dict[str, str]) -> dict[str, str]:
    """``ETag``, ``Last-Modified`` and ``Content-Length`` (the object's size: the total of a
    ranged reply's ``Content-Range``) from response headers of any letter case."""
    folded = {name.lower(): value for name, value in headers.items()}
    out = {key: folded[key.lower()] for key in ("ETag", "Last-Modified") if folded.get(key.lower())}
    total = folded.get("content-range", "").rpartition("/")[2]
    size = total if total.isdigit() else folded.get("content-length")
    if out and size:
        out["Content-Length"] = size
    return out


def remote_identity(path: str, meta: str) -> str:
    """A remote raster (a GDAL /vsi... path): its validators where the server gives them,
    else the sha256 of the metadata GDAL read (``meta``). Call it inside the GDAL
    environment the raster is read with (credentials, endpoint)."""
    from reattn_batch.scene._vsi_headers import vsi_headers

    found = validators(vsi_headers(path))
    url = path.removeprefix("/vsicurl/")
    if not found and is_url(url):
        found = validators(http_headers(url))
    if found:
        return f"{path}|" + "|".join(f"{k}={v}" for k, v in sorted(found.items()))
    return f"{path}|meta-sha256={hashlib.sha256(meta.encode()).hexdigest()[:16]}"


def zarr_identity(path: str, variable: str, markers: Iterable[str]) -> str:
    """A Zarr variable: its metadata files and chunk files (listing + a sample of their
    bytes), local or remote (:func:`remote_zarr_identity`)."""
    if "://" in path:
        return remote_zarr_identity(path, variable, markers)
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


def _object_version(info: dict) -> str:
    """What changes when an object is rewritten: its ETag where the store gives one,
    else its modification time."""
    for key in ("ETag", "etag", "md5Hash", "LastModified", "last_modified", "mtime", "updated"):
        if info.get(key):
            return f"{key}={info[key]}"
    return "unversioned"


def remote_zarr_identity(path: str, variable: str, markers: Iterable[str]) -> str:
    """A Zarr variable behind an fsspec URL: metadata file contents, the chunk listing
    (name, size, ETag or mtime) and the first bytes of up to :data:`STRIDES` chunks. A
    store that cannot be listed (plain HTTP) is identified by its metadata alone."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(path, **fsspec_options(path))
    folder = posixpath.join(root, variable)
    digest = hashlib.sha256()
    for where in (root, folder):
        for marker in markers:
            name = posixpath.join(where, marker)
            if fs.isfile(name):
                digest.update(f"{name}:".encode() + fs.cat_file(name))
    try:
        listing = fs.find(folder, detail=True)
    except (OSError, NotImplementedError, ValueError):
        listing = {}
    chunks = sorted(name for name in listing if not posixpath.basename(name).startswith("."))
    for name in chunks:
        info = listing[name]
        rel = posixpath.relpath(name, root)
        digest.update(f"{rel}:{info.get('size')}:{_object_version(info)};".encode())
    step = max(1, len(chunks) // STRIDES)
    for name in chunks[::step][:STRIDES] + chunks[-1:]:
        digest.update(hashlib.sha256(fs.cat_file(name, start=0, end=EDGE)).digest())
    listed = f"{len(chunks)} chunks" if chunks else "chunks not listed"
    return f"{path}|{variable}|{listed}|sha256={digest.hexdigest()[:16]}"
