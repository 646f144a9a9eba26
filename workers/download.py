"""Fetching a pinned file into the local cache (with pooch): checked, written atomically,
re-fetched if bad.

A :class:`PinnedFile` names a URL at a fixed revision (a commit hash, never a branch) and
the digests its bytes must have. :func:`fetch_pinned` returns a cached copy only after
checking its digests, so a truncated or altered cache file is noticed (and fetched again,
with a warning) on every call, not only the first. ``pooch.retrieve`` streams a download
into a temporary file in the cache folder, checks its sha256 and only then moves it over
the destination (a rename in one folder): readers see the old file or the complete new
one, never a partial file, and a failed download leaves nothing behind. Into that
temporary file :class:`_PinnedDownloader` (pooch's HTTP downloader) writes at most
``max_bytes``, flushes it to disk and checks the git blob id too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import pooch
import requests

from reattn_batch.workers.describe import one_line
from reattn_batch.workers.errors import ModelError

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class PinnedFile:
    """A file fetched from a fixed revision and accepted only with the expected content.

    url: where to fetch it; it names an immutable revision (a commit hash).
    sha256: hex sha256 of the file's bytes.
    git_blob: git's object id of the file (SHA-1 of ``b"blob <size>\\0" + bytes``) as the
        repository's tree at the pinned commit lists it, or None; when given it is checked
        too, so the file must match what the repository itself records for that commit.
    max_bytes: a download that grows past this is stopped (a hostile or broken server
        cannot fill the disk).
    """

    url: str
    sha256: str
    git_blob: str | None = None
    max_bytes: int = 256 << 20

    @property
    def filename(self) -> str:
        return self.url.rstrip("/").rpartition("/")[2]


def file_digests(path: Path) -> tuple[str, str]:
    """(sha256, git blob id) of a file's bytes, read once."""
    size = path.stat().st_size
    sha256, blob = hashlib.sha256(), hashlib.sha1(f"blob {size}\0".encode())
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            sha256.update(chunk)
            blob.update(chunk)
    return sha256.hexdigest(), blob.hexdigest()


def content_problem(path: Path, pin: PinnedFile) -> str | None:
    """Why ``path`` is not the pinned file (one short phrase), or None when it is."""
    try:
        sha256, blob = file_digests(path)
    except OSError as e:
        return f"unreadable: {e.strerror or type(e).__name__}"
    if sha256 != pin.sha256.lower():
        return f"sha256 {sha256[:12]}... is not the pinned {pin.sha256[:12]}..."
    if pin.git_blob is not None and blob != pin.git_blob.lower():
        return f"git blob {blob[:12]}... is not the pinned {pin.git_blob[:12]}..."
    return None


class _CappedFile:
    """A binary file that refuses to grow past ``limit`` bytes (ValueError)."""

    def __init__(self, f: Any, limit: int) -> None:
        self.f, self.limit, self.size = f, limit, 0

    def write(self, chunk: bytes) -> int:
        self.size += len(chunk)
        if self.size > self.limit:
            raise ValueError(f"the server sent more than {self.limit} bytes")
        return self.f.write(chunk)

    def flush(self) -> None:
        self.f.flush()


class _PinnedDownloader:
    """pooch's HTTP downloader into pooch's temporary file, at most ``pin.max_bytes``, made
    durable (fsync) and checked against both digests before pooch moves it into place."""

    def __init__(self, pin: PinnedFile, timeout: float) -> None:
        self.pin = pin
        self.http = pooch.HTTPDownloader(timeout=timeout, progressbar=False)

    def __call__(self, url: str, output_file: str, pup: Any, check_only: bool = False) -> Any:
        if check_only:
            return self.http(url, output_file, pup, check_only=True)
        with open(output_file, "wb") as f:
            self.http(url, _CappedFile(f, self.pin.max_bytes), pup)
            f.flush()
            os.fsync(f.fileno())
        problem = content_problem(Path(output_file), self.pin)
        if problem is not None:
            raise ValueError(f"the server sent other bytes than the pinned file: {problem}")
        return None


def fetch_pinned(
    pin: PinnedFile, dest: Path, *, what: str, fix: str, timeout: float = 30.0
) -> Path:
    """``dest`` holding exactly the pinned file, downloaded from ``pin.url`` if needed.

    A cached ``dest`` is checked against the pin on every call; a bad one (truncated,
    altered, unreadable) is fetched again with a warning that says why. Any failure
    (offline, HTTP error, wrong bytes, too large) raises a one-line :class:`UserError`
    "``what`` could not be fetched from URL (reason); ``fix``" and leaves no partial file.
    """
    if dest.is_file():
        problem = content_problem(dest, pin)
        if problem is None:
            return dest
        log.warning(
            "the cached %s %s is damaged (%s): fetching it again from %s",
            what,
            dest,
            problem,
            pin.url,
        )
        dest.unlink(missing_ok=True)  # pooch would keep a file whose sha256 alone matches
    else:
        log.info("downloading %s %s -> %s", what, pin.url, dest)
    try:
        pooch.retrieve(
            pin.url,
            known_hash=f"sha256:{pin.sha256.lower()}",
            fname=dest.name,
            path=dest.parent,
            downloader=_PinnedDownloader(pin, timeout),
        )
        _fsync_dir(dest.parent)
        problem = content_problem(dest, pin)  # pooch checked the sha256; the git blob too
        if problem is not None:
            dest.unlink(missing_ok=True)
            raise ValueError(problem)
    except (OSError, requests.RequestException, ValueError) as e:
        reason = one_line(e)
        raise ModelError(f"{what} could not be fetched from {pin.url} ({reason}); {fix}") from e
    log.info("%s saved to %s (sha256 %s)", what, dest, pin.sha256)
    return dest


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable where the platform allows it."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
