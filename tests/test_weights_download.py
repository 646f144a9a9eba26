"""The default SimFeatUp weights: pinned, checked, cached atomically, re-fetched when bad.

A real HTTP server on loopback serves the file; the pin (URL and digests) is replaced in
one place, ``reattn_batch.workers.upsampler.weights.JBU_ONE``. No part of pooch or its HTTP
client is replaced.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import logging
import subprocess
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import reattn_batch.workers.upsampler.weights as up
from reattn_batch.workers.download import PinnedFile, content_problem, file_digests
from reattn_batch.workers.errors import UserError
from reattn_batch.workers.upsampler import JBUOne, default_upsampler_weights, load_upsampler


class Server:
    """Serves ``files`` (URL path -> bytes) on 127.0.0.1 and counts the requests."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                server.requests.append(self.path)
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def url(self, path: str) -> str:
        return self.base + path


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server()
    thread = threading.Thread(target=srv.httpd.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()
    thread.join()


@pytest.fixture(scope="module")
def ckpt_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A real jbu_one Lightning-style checkpoint (small feat_dim), as bytes."""
    torch.manual_seed(0)
    model = JBUOne(feat_dim=32)
    path = tmp_path_factory.mktemp("ckpt") / "jbu_one.ckpt"
    torch.save({"state_dict": {f"upsampler.{k}": v for k, v in model.state_dict().items()}}, path)
    return path.read_bytes()


def git_blob_id(path: Path) -> str:
    """git's own object id of a file (an oracle independent of reattn_batch.workers.download)."""
    return subprocess.run(
        ["git", "hash-object", "--no-filters", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def pin_for(monkeypatch: pytest.MonkeyPatch, url: str, content: bytes) -> PinnedFile:
    pin = PinnedFile(url=url, sha256=hashlib.sha256(content).hexdigest())
    monkeypatch.setattr(up, "JBU_ONE", pin)
    monkeypatch.setattr(up, "DOWNLOAD_TIMEOUT_S", 5.0)
    return pin


def cache_files(root: Path) -> list[str]:
    folder = root / "upsampler"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_the_shipped_pin_accepts_only_its_own_bytes(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    server: Server,
    ckpt_bytes: bytes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The shipped pin, its digests untouched, its URL's path served on loopback: a server
    that answers with another file is refused (naming the pinned sha256) and nothing is
    cached; another file already at the default cache path is not trusted but fetched
    again; a file that had the pinned sha256 would still need the pinned git blob."""
    shipped = up.JBU_ONE
    path = urllib.parse.urlsplit(shipped.url).path
    server.files[path] = ckpt_bytes
    monkeypatch.setenv("REATTN_BATCH_CACHE", str(tmp_path))
    monkeypatch.setattr(up, "JBU_ONE", dataclasses.replace(shipped, url=server.url(path)))
    monkeypatch.setattr(up, "DOWNLOAD_TIMEOUT_S", 5.0)

    with pytest.raises(UserError) as err:
        default_upsampler_weights("jbu_one")
    assert f"is not the pinned {shipped.sha256[:12]}" in str(err.value)
    assert server.requests == [path] and cache_files(tmp_path) == []

    cached = tmp_path / "upsampler" / Path(path).name
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(ckpt_bytes)
    with (
        caplog.at_level(logging.WARNING, logger="reattn_batch.workers.download"),
        pytest.raises(UserError, match="could not be fetched"),
    ):
        load_upsampler("jbu_one", None, feat_dim=32)
    assert server.requests == [path, path]  # the cached copy was checked, not loaded
    assert any("damaged" in r.getMessage() for r in caplog.records)

    same_sha = dataclasses.replace(
        shipped, url=server.url(path), sha256=hashlib.sha256(ckpt_bytes).hexdigest()
    )
    monkeypatch.setattr(up, "JBU_ONE", same_sha)
    with pytest.raises(UserError) as err:
        default_upsampler_weights("jbu_one")
    copy = tmp_path / "copy.ckpt"
    copy.write_bytes(ckpt_bytes)
    ours, pinned = git_blob_id(copy)[:12], shipped.git_blob[:12]
    assert f"git blob {ours}... is not the pinned {pinned}" in str(err.value)
    assert cache_files(tmp_path) == []  # refused: nothing left in the cache


def test_digests_match_sha256_and_git(tmp_path: Path, ckpt_bytes: bytes) -> None:
    path = tmp_path / "w.ckpt"
    path.write_bytes(ckpt_bytes)
    assert file_digests(path) == (hashlib.sha256(ckpt_bytes).hexdigest(), git_blob_id(path))
    good = PinnedFile("http://x/w.ckpt", hashlib.sha256(ckpt_bytes).hexdigest(), git_blob_id(path))
    assert content_problem(path, good) is None
    wrong_blob = PinnedFile(good.url, good.sha256, "0" * 40)
    assert "git blob" in (content_problem(path, wrong_blob) or "")
    assert "sha256" in (content_problem(path, PinnedFile(good.url, "0" * 64)) or "")


def test_good_file_is_fetched_once_and_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: Server, ckpt_bytes: bytes
) -> None:
    monkeypatch.setenv("REATTN_BATCH_CACHE", str(tmp_path))
    server.files["/rev/xclip_jbu_one_million_aid.ckpt"] = ckpt_bytes
    pin_for(monkeypatch, server.url("/rev/xclip_jbu_one_million_aid.ckpt"), ckpt_bytes)

    path = default_upsampler_weights("jbu_one")
    assert path == tmp_path / "upsampler" / "xclip_jbu_one_million_aid.ckpt"
    assert path.read_bytes() == ckpt_bytes
    assert cache_files(tmp_path) == [path.name]  # no temporary file left
    assert default_upsampler_weights("jbu_one") == path
    assert len(server.requests) == 1  # the second call used the checked cache
    assert isinstance(load_upsampler("jbu_one", None, feat_dim=32), JBUOne)


@pytest.mark.parametrize("damage", ["truncated", "altered", "empty"])
def test_damaged_cache_is_fetched_again_with_a_warning(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    server: Server,
    ckpt_bytes: bytes,
    caplog: pytest.LogCaptureFixture,
    damage: str,
) -> None:
    monkeypatch.setenv("REATTN_BATCH_CACHE", str(tmp_path))
    server.files["/rev/w.ckpt"] = ckpt_bytes
    pin_for(monkeypatch, server.url("/rev/w.ckpt"), ckpt_bytes)
    cached = tmp_path / "upsampler" / "w.ckpt"
    cached.parent.mkdir(parents=True)
    bad = {
        "truncated": ckpt_bytes[: len(ckpt_bytes) // 2],
        "altered": ckpt_bytes[:-1] + bytes([ckpt_bytes[-1] ^ 1]),  # same size, one bit
        "empty": b"",
    }[damage]
    cached.write_bytes(bad)

    with caplog.at_level(logging.WARNING, logger="reattn_batch.workers.download"):
        assert default_upsampler_weights("jbu_one") == cached
    assert cached.read_bytes() == ckpt_bytes
    assert server.requests == ["/rev/w.ckpt"]
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "damaged" in warning and str(cached) in warning and "sha256" in warning
    assert cache_files(tmp_path) == ["w.ckpt"]


def test_wrong_bytes_from_the_server_are_refused_and_nothing_is_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: Server, ckpt_bytes: bytes
) -> None:
    monkeypatch.setenv("REATTN_BATCH_CACHE", str(tmp_path))
    url = server.url("/rev/w.ckpt")
    pin_for(monkeypatch, url, ckpt_bytes)
    server.files["/rev/w.ckpt"] = ckpt_bytes[:-10] + b"0123456789"  # a tampered copy

    with pytest.raises(UserError) as err:
        default_upsampler_weights("jbu_one")
    msg = str(err.value)
    assert "\n" not in msg and url in msg and "sha256" in msg
    assert "upsampler_weights=" in msg and "upsampler=bilinear" in msg
    assert cache_files(tmp_path) == []  # no partial or temporary file

    with pytest.raises(UserError, match="could not be fetched"):  # and so with load_upsampler
        load_upsampler("jbu_one", None, feat_dim=32)
    assert cache_files(tmp_path) == []


def test_oversized_download_is_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: Server, ckpt_bytes: bytes
) -> None:
    monkeypatch.setenv("REATTN_BATCH_CACHE", str(tmp_path))
    url = server.url("/rev/w.ckpt")
    server.files["/rev/w.ckpt"] = bytes(3 << 20)
    pin = PinnedFile(url, hashlib.sha256(ckpt_bytes).hexdigest(), max_bytes=1 << 20)
    monkeypatch.setattr(up, "JBU_ONE", pin)
    with pytest.raises(UserError, match="more than 1048576 bytes"):
        default_upsampler_weights("jbu_one")
    assert cache_files(tmp_path) == []


def test_offline_is_one_line_naming_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ckpt_bytes: bytes
) -> None:
    monkeypatch.setenv("REATTN_BATCH_CACHE", str(tmp_path))
    pin_for(monkeypatch, "http://127.0.0.1:9/w.ckpt", ckpt_bytes)  # port 9: nobody listens
    with pytest.raises(UserError) as err:
        default_upsampler_weights("jbu_one")
    msg = str(err.value)
    assert "\n" not in msg and "http://127.0.0.1:9/w.ckpt" in msg
    assert "upsampler_weights=PATH" in msg and "upsampler=bilinear" in msg
    assert cache_files(tmp_path) == []
