"""What a scene's identity sees (issue 11 item 2): content edits that keep size and
mtime, sidecars, a VRT's sources, an HTTP object's validators (a real stdlib server on
loopback), and a large file's sampled bytes. Identities come from ``open_scene``, the
reader every run uses."""

from __future__ import annotations

import http.server
import os
import threading
from pathlib import Path

import cli_helpers as h
import pytest
import rasterio
from rasterio.windows import Window

from reattn_batch.scene import open_scene
from reattn_batch.scene.identity import EDGE, remote_identity


def _edit_keeping_size_and_mtime(path: Path, window=Window(0, 0, 16, 16)) -> None:
    before = os.stat(path)
    with rasterio.open(path, "r+") as ds:
        ds.write(255 - ds.read(window=window), window=window)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)


def test_a_same_size_edit_with_the_old_mtime_changes_the_identity(tmp_path):
    scene = h.write_scene(tmp_path / "scene.tif", 300, 260)
    before = open_scene(str(scene)).identity
    assert open_scene(str(scene)).identity == before  # stable for an unchanged file
    _edit_keeping_size_and_mtime(scene)
    assert open_scene(str(scene)).identity != before


def test_a_large_file_is_sampled_in_its_middle_too(tmp_path):
    """A file larger than the sample: an edit between the head and tail MiB is seen when
    it falls in a sampled block (here the whole middle is rewritten)."""
    scene = h.write_scene(tmp_path / "big.tif", 2048, 1024)  # 6 MiB uncompressed
    assert scene.stat().st_size > 3 * EDGE
    before = open_scene(str(scene)).identity
    _edit_keeping_size_and_mtime(scene, Window(0, 256, 2048, 512))
    assert open_scene(str(scene)).identity != before


def test_a_sidecar_changes_the_identity(tmp_path):
    scene = h.write_scene(tmp_path / "scene.tif", 300, 260)
    before = open_scene(str(scene)).identity
    Path(f"{scene}.aux.xml").write_text(
        "<PAMDataset><PAMRasterBand band='1'><NoDataValue>0</NoDataValue></PAMRasterBand>"
        "</PAMDataset>"
    )
    assert open_scene(str(scene)).identity != before


def test_an_edited_vrt_source_changes_the_vrt_identity(tmp_path):
    source = h.write_scene(tmp_path / "source.tif", 300, 260)
    vrt = tmp_path / "scene.vrt"
    with rasterio.open(source) as ds:
        bands = "".join(
            f'<VRTRasterBand dataType="Byte" band="{b}"><SimpleSource>'
            f'<SourceFilename relativeToVRT="1">source.tif</SourceFilename>'
            f"<SourceBand>{b}</SourceBand></SimpleSource></VRTRasterBand>"
            for b in range(1, ds.count + 1)
        )
        gt = ", ".join(str(v) for v in ds.transform.to_gdal())
        vrt.write_text(
            f'<VRTDataset rasterXSize="{ds.width}" rasterYSize="{ds.height}">'
            f"<SRS>{ds.crs.to_wkt()}</SRS><GeoTransform>{gt}</GeoTransform>{bands}</VRTDataset>"
        )
    before = open_scene(str(vrt)).identity
    _edit_keeping_size_and_mtime(source)
    assert open_scene(str(vrt)).identity != before


class _Server(http.server.SimpleHTTPRequestHandler):
    etag = '"v1"'

    def end_headers(self) -> None:
        self.send_header("ETag", type(self).etag)
        super().end_headers()

    def log_message(self, *args) -> None:  # quiet
        pass


@pytest.fixture
def http_folder(tmp_path):
    handler = type("Handler", (_Server,), {})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), lambda *a: handler(*a, directory=str(tmp_path))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield tmp_path, handler, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def test_an_http_object_is_identified_by_its_etag(http_folder):
    folder, handler, base = http_folder
    h.write_scene(folder / "scene.tif", 300, 260)
    path = f"/vsicurl/{base}/scene.tif"
    first = remote_identity(path, "same metadata")
    assert 'ETag="v1"' in first and remote_identity(path, "same metadata") == first
    handler.etag = '"v2"'  # the object was replaced on the server, same metadata
    assert remote_identity(path, "same metadata") != first


def test_an_http_object_without_validators_falls_back_to_metadata(http_folder):
    _, _, base = http_folder
    path = f"/vsicurl/{base}/missing.tif"  # 404: no validators
    assert "meta-sha256" in remote_identity(path, "a")
    assert remote_identity(path, "a") != remote_identity(path, "b")


class _FakeS3(http.server.BaseHTTPRequestHandler):
    """A path-style S3 endpoint over a folder: GET (with Range) and HEAD of
    ``/bucket/<name>``, each reply carrying the class's ETag; nothing else exists."""

    etag = '"s3-v1"'
    folder: Path

    def _object(self) -> bytes | None:
        name = self.path.split("?")[0].removeprefix("/bucket/")
        path = self.folder / name
        return path.read_bytes() if "/" not in name and path.is_file() else None

    def _reply(self, code: int, length: int, extra: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("ETag", type(self).etag)
        self.send_header("Last-Modified", "Wed, 02 Dec 2026 08:00:00 GMT")
        self.send_header("Content-Length", str(length))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()

    def do_HEAD(self) -> None:
        data = self._object()
        self._reply(200, len(data)) if data is not None else self._reply(404, 0)

    def do_GET(self) -> None:
        data = self._object()
        if data is None:
            self._reply(404, 0)
            return
        first, _, last = self.headers.get("Range", "bytes=0-").split("=")[1].partition("-")
        start, end = int(first), min(int(last or len(data) - 1), len(data) - 1)
        self._reply(206, end - start + 1, {"Content-Range": f"bytes {start}-{end}/{len(data)}"})
        self.wfile.write(data[start : end + 1])

    def log_message(self, *args) -> None:  # quiet
        pass


@pytest.fixture
def s3_bucket(tmp_path, monkeypatch):
    """A fake S3 endpoint on loopback that GDAL's /vsis3/ reads (unsigned, path style)."""
    handler = type("Handler", (_FakeS3,), {"folder": tmp_path})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    for key, value in {
        "AWS_S3_ENDPOINT": f"127.0.0.1:{server.server_address[1]}",
        "AWS_HTTPS": "NO",
        "AWS_VIRTUAL_HOSTING": "FALSE",
        "AWS_NO_SIGN_REQUEST": "YES",
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
        "GDAL_HTTP_MAX_RETRY": "0",
    }.items():
        monkeypatch.setenv(key, value)
    try:
        yield tmp_path, handler
    finally:
        server.shutdown()
        server.server_close()


def test_an_s3_object_is_identified_by_its_etag_as_gdal_reads_it(s3_bucket):
    """s3:// scenes: the identity holds the ETag, Last-Modified and size of GDAL's own
    (credentialed) request, so a replaced object with the same metadata is noticed."""
    folder, handler = s3_bucket
    h.write_scene(folder / "scene.tif", 300, 260)
    size = (folder / "scene.tif").stat().st_size
    first = open_scene("s3://bucket/scene.tif").identity
    assert 'ETag="s3-v1"' in first and f"Content-Length={size}" in first, first
    assert "meta-sha256" not in first
    assert open_scene("s3://bucket/scene.tif").identity == first
    handler.etag = '"s3-v2"'  # replaced in the bucket: same bytes of metadata, new object
    assert open_scene("s3://bucket/scene.tif").identity != first


def test_a_remote_zarr_sees_an_edited_chunk_through_fsspec(tmp_path):
    """A Zarr behind a URL (fsspec, as s3:// or gs:// stores are read) is identified by
    its metadata, chunk listing and chunk bytes, not by its URL: rewriting one chunk with
    the metadata files untouched changes the identity; nothing changed keeps it."""
    import zarr

    scene = h.write_zarr_scene(tmp_path / "scene.zarr", 300, 260)
    url = f"file://{scene}"
    first = open_scene(url).identity
    assert first.startswith(f"{url}|image|") and "chunks not listed" not in first, first
    assert open_scene(url).identity == first
    meta = {p: os.stat(p).st_mtime_ns for p in scene.rglob(".z*")}
    image = zarr.open_array(str(scene / "image"), mode="r+")
    image[:, :128, :128] = 255 - image[:, :128, :128]  # rewrites one chunk object
    assert {p: os.stat(p).st_mtime_ns for p in meta} == meta
    assert open_scene(url).identity != first
