"""What a scene's identity sees (issue 11 item 2): content edits that keep size and
mtime, sidecars, a VRT's sources, an HTTP object's validators (a real stdlib server on
loopback), and a large file's sampled bytes. Identities come from ``open_scene``, the
reader every run uses."""

from __future__ import annotations

import http.server
import os
import threading
from pathlib import Path

import pytest
import rasterio
from rasterio.windows import Window

from pipeline.scene import open_scene
from pipeline.scene.identity import EDGE, remote_identity
from tests import hardening_helpers as h


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
