"""Untrusted catalogues (issue 19, items 2, 3 and the job-spec part of 5).

A STAC document read over the network names only http(s), s3 and gs assets on public
hosts or its own origin; every STAC read has timeouts and a size cap; a search ends at
max_items and at a repeated ``next`` link; an Item id names a store only as one safe path
component; one bad Item fails only its scene; a job spec has no YAML aliases and a bounded
``intersects``. Real HTTP servers on loopback (tests/stac_helpers.py), real files, the
tiny random model where a scene is mapped.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path

import cli_helpers as h
import numpy as np
import pytest
from stac_helpers import (
    Server,
    StacApi,
    landing_page,
    make_item,
    reply,
    save_item,
    write_tif,
)

from reattn_batch import store
from reattn_batch.cli import main
from reattn_batch.regional.catalogue import DEFAULT_MAX_ITEMS
from reattn_batch.regional.spec import MAX_INTERSECTS_VERTICES, RegionalJob
from reattn_batch.scene.href_policy import check_href
from reattn_batch.scene.stac_io import MAX_DOCUMENT_BYTES
from reattn_batch.workers.errors import InputError

TINY = ["--clip-weights", "random", "--set", "clip_model=ViT-T-16-test", "--upsampler", "bilinear"]
RUN = ["--classes", "building,water", *TINY, "--block-size", "512", "--workers", "1"]
ALLOW = "REATTN_BATCH_ALLOW_PRIVATE_HREFS"
JOB_TAIL = (
    "classes: building,water\n"
    + h.TINY_MODEL_YAML
    + "run:\n  block_size: 512\noutput_root: labels\n"
    + "cluster:\n  local: {workers: 1, threads_per_worker: 1}\n"
)


@pytest.fixture(autouse=True)
def no_opt_in(monkeypatch):
    """The operator's opt-in is off unless a test sets it."""
    monkeypatch.delenv(ALLOW, raising=False)
    monkeypatch.delenv("REATTN_BATCH_STAC_TIMEOUT", raising=False)


def served_item(server: Server, route: str, data: dict) -> str:
    server.routes[route] = lambda handler, query: reply(handler, data)
    return server.url + route


def labels_of(path: Path) -> np.ndarray:
    return np.asarray(store.open_labels(path)[:])


# ----------------------------------------------------------------------------- item 2


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "href",
    [
        "file:///etc/passwd",
        "/vsicurl/{url}/data/secret.tif",
        "http://169.254.169.254/latest/meta-data/scene.tif",
        "http://10.0.0.1/scene.tif",
    ],
)
def test_a_remote_item_may_not_name_local_files_raw_vsi_paths_or_private_hosts(
    tmp_path, capsys, href
):
    secret = write_tif(tmp_path / "secret.tif", 356000.0, 1)
    server = Server()
    try:
        server.file(secret)
        item = make_item("bad", secret).to_dict(include_self_link=False)
        item["assets"]["visual"]["href"] = href.format(url=server.url)
        url = served_item(server, "/items/bad.json", item)
        out = tmp_path / "out.labels.zarr"
        err = h.fails_with_one_line(capsys, "run", url, *RUN, "--out", out)
    finally:
        server.close()
    shown = href.format(url=server.url)
    assert f"asset href {shown!r} named by {url} is refused" in err, err
    assert ALLOW in err  # the fix an operator may choose
    assert "/data/secret.tif" not in server.requests and not out.exists()


def test_the_href_rules(monkeypatch):
    """Which hrefs a remote document at a loopback URL may name, and the opt-in."""
    doc = "http://127.0.0.1:8000/collections/c/items/a"
    allowed = {
        "x.tif": "http://127.0.0.1:8000/collections/c/items/x.tif",  # its own origin
        "../../../data/x.tif": "http://127.0.0.1:8000/data/x.tif",
        "/data/x.tif": "http://127.0.0.1:8000/data/x.tif",  # a path on its own origin
        "HTTP://8.8.8.8/x.tif": "http://8.8.8.8/x.tif",  # a public address
        "s3://sentinel-cogs/a/b.tif": "s3://sentinel-cogs/a/b.tif",
        "gs://gcp-public-data/x.tif": "gs://gcp-public-data/x.tif",
    }
    for href, url in allowed.items():
        assert check_href(href, doc) == url
    refused = {
        "http://127.0.0.1:8001/x.tif": "loopback",  # another origin on loopback
        "http://localhost:8000/x.tif": "loopback",
        "http://[::1]/x.tif": "loopback",
        "http://[::ffff:10.1.2.3]/x.tif": "private",
        "http://2130706433/x.tif": "loopback",  # 127.0.0.1 written as a number
        "//192.168.1.1/x.tif": "private",
        "http://0.0.0.0/x.tif": "unspecified",
        "http://224.0.0.1/x.tif": "multicast",
        "http://100.64.0.1/x.tif": "non-public",
        "ftp://8.8.8.8/x.tif": "scheme ftp:",
        "zarr:///data/x.zarr": "scheme zarr:",
        "C:\\data\\x.tif": "scheme c:",
        "\\\\server\\share\\x.tif": "a local path",
        "s3://Not_A_Bucket!/x.tif": "not a s3://BUCKET/KEY URL",
        "gs://bucket-only": "not a gs://BUCKET/KEY URL",
    }
    for href, why in refused.items():
        with pytest.raises(InputError, match=re.escape(why)):
            check_href(href, doc)
    monkeypatch.setenv(ALLOW, "1")  # the operator's choice: private hosts, never local files
    assert check_href("http://10.0.0.1/x.tif", doc) == "http://10.0.0.1/x.tif"
    for href in ("file:///etc/passwd", "/vsis3/bucket/x.tif"):
        with pytest.raises(InputError, match="refused"):
            check_href(href, doc)
    assert check_href("/etc/passwd", doc) == "http://127.0.0.1:8000/etc/passwd"  # a URL


def test_a_private_host_needs_the_operators_opt_in_and_an_item_id_cannot_escape(
    tmp_path, capsys, monkeypatch
):
    tif = write_tif(tmp_path / "scene.tif", 356000.0, 2)
    items, data = Server(), Server()  # two origins, both on loopback
    work = tmp_path / "a" / "b" / "work"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    try:
        item = make_item("../../x", tif).to_dict(include_self_link=False)
        item["assets"]["visual"]["href"] = data.file(tif)
        url = served_item(items, "/items/x.json", item)
        err = h.fails_with_one_line(capsys, "run", url, *RUN)
        assert "refused (host 127.0.0.1 is a loopback address)" in err, err
        assert data.requests == []
        monkeypatch.setenv(ALLOW, "1")
        main(["run", url, *RUN])
    finally:
        items.close()
        data.close()
    (out,) = work.iterdir()  # the id is one safe path component, inside the working folder
    assert re.fullmatch(r"x-[0-9a-f]{12}\.labels\.zarr", out.name), out.name
    assert list(tmp_path.rglob("*.labels.zarr")) == [out]
    assert store.read_attrs(out)["scene"] == f"/vsicurl/{data.url}/data/{tif.name}"
    assert labels_of(out).shape == (64, 64)


def test_a_redirect_is_checked_as_an_href_of_the_server_that_sends_it(tmp_path, capsys):
    tif = write_tif(tmp_path / "scene.tif", 356000.0, 6)
    public, private = Server(), Server()  # the redirect leads to another loopback origin
    target = served_item(private, "/items/x.json", make_item("x", tif).to_dict())

    def redirect(handler, query) -> None:
        handler.send_response(302)
        handler.send_header("Location", target)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    public.routes["/items/x.json"] = redirect
    try:
        err = h.fails_with_one_line(
            capsys, "run", f"{public.url}/items/x.json", *RUN, "--out", tmp_path / "o"
        )
    finally:
        public.close()
        private.close()
    assert f"redirect {target!r} named by {public.url}/items/x.json is refused" in err, err
    assert private.requests == []


@pytest.mark.timeout(60)
def test_a_stalled_stac_server_fails_within_the_timeout(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("REATTN_BATCH_STAC_TIMEOUT", "1")
    server = Server()

    def stall(handler, query) -> None:  # headers, then nothing
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", "1000")
        handler.end_headers()
        handler.wfile.flush()
        server.released.wait(60)

    server.routes["/items/slow.json"] = stall
    start = time.monotonic()
    try:
        err = h.fails_with_one_line(
            capsys, "run", f"{server.url}/items/slow.json", *RUN, "--out", tmp_path / "o"
        )
    finally:
        server.close()
    assert time.monotonic() - start < 20
    assert "sent nothing for 1 s (REATTN_BATCH_STAC_TIMEOUT)" in err, err


def test_an_endless_stac_document_is_cut_at_the_cap(tmp_path, capsys):
    sent: list[int] = []
    block = b" " * 2**20  # JSON whitespace: a parser reads on and on

    def endless(handler, query) -> None:  # no Content-Length: the body ends at close
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.end_headers()
        total = 0
        try:
            for _ in range(3 * MAX_DOCUMENT_BYTES // len(block)):
                handler.wfile.write(block)
                total += len(block)
        except OSError:  # the reader hung up
            pass
        sent.append(total)

    server = Server({"/items/huge.json": endless})
    try:
        err = h.fails_with_one_line(
            capsys, "run", f"{server.url}/items/huge.json", *RUN, "--out", tmp_path / "o"
        )
        h.wait_for(lambda: sent, 30, "the server to finish")
    finally:
        server.close()
    assert f"more than {MAX_DOCUMENT_BYTES // 2**20} MiB" in err, err
    assert sent[0] < 2 * MAX_DOCUMENT_BYTES  # the reader stopped at the cap


def api_server(search) -> Server:
    """A STAC API whose /search is ``search(server, handler, query)``."""
    server = Server()
    server.routes.update({
        "/": lambda handler, query: reply(handler, landing_page(server.url)),
        "/conformance": lambda handler, query: reply(handler, {"conformsTo": []}),
        "/search": lambda handler, query: search(server, handler, query),
    })  # fmt: skip
    return server


def feature(server: Server, item_id: str) -> dict:
    return {
        "type": "Feature", "stac_version": "1.0.0", "id": item_id, "geometry": None,
        "properties": {"datetime": "2024-06-01T00:00:00Z"}, "assets": {},
        "links": [{"rel": "self", "href": f"{server.url}/items/{item_id}.json"}],
    }  # fmt: skip


def search_spec(tmp_path: Path, url: str) -> Path:
    spec = tmp_path / "job.yaml"
    spec.write_text(f"name: t\nscenes:\n  stac_search:\n    url: {url}\n{JOB_TAIL}")
    return spec


@pytest.mark.timeout(60)
def test_a_search_whose_next_link_names_itself_ends(tmp_path, caplog):
    def search(server, handler, query) -> None:
        next_page = {"rel": "next", "href": f"{server.url}/search?page=same"}
        page = [feature(server, "a"), feature(server, "b")]
        reply(handler, {"type": "FeatureCollection", "features": page, "links": [next_page]})

    server = api_server(search)
    start = time.monotonic()
    try:
        with caplog.at_level(logging.WARNING):
            scenes = RegionalJob.load(search_spec(tmp_path, server.url)).scenes
    finally:
        server.close()
    assert scenes == (f"{server.url}/items/a.json", f"{server.url}/items/b.json")
    assert server.requests.count("/search") <= 3 and time.monotonic() - start < 30
    assert "names itself (or an earlier page) as `next`" in caplog.text


@pytest.mark.timeout(120)
def test_a_search_ends_at_the_default_max_items(tmp_path, caplog):
    per_page, pages = 500, 30  # the API holds 15,000 Items

    def search(server, handler, query) -> None:
        page = int(query.get("page", 0))
        count = per_page if page < pages else 0
        features = [feature(server, f"p{page}-{i}") for i in range(count)]
        links = [{"rel": "next", "href": f"{server.url}/search?page={page + 1}"}]
        reply(handler, {"type": "FeatureCollection", "features": features, "links": links})

    assert per_page * pages > DEFAULT_MAX_ITEMS
    server = api_server(search)
    try:
        with caplog.at_level(logging.WARNING):
            job_spec = RegionalJob.load(search_spec(tmp_path, server.url))
    finally:
        server.close()
    assert len(job_spec.scenes) == DEFAULT_MAX_ITEMS
    # one page more than the Items kept: the one that shows the API holds more
    assert server.requests.count("/search") == DEFAULT_MAX_ITEMS // per_page + 1
    assert f"stopped at {DEFAULT_MAX_ITEMS} Items (max_items)" in caplog.text


@pytest.mark.timeout(60)
def test_a_remote_static_catalog_is_walked_once_and_its_links_are_checked(tmp_path):
    tif = write_tif(tmp_path / "c.tif", 356000.0, 3)
    server = Server()
    item = make_item("cat-0", tif).to_dict(include_self_link=False)
    item["assets"]["visual"]["href"] = "../data/c.tif"
    server.file(tif)

    def catalog(name: str, links: list[tuple[str, str]]) -> dict:
        return {
            "type": "Catalog", "stac_version": "1.0.0", "id": name, "description": name,
            "links": [{"rel": rel, "href": href} for rel, href in links],
        }  # fmt: skip

    root = catalog("root", [
        ("child", "./catalog.json"),  # itself
        ("child", "sub/catalog.json"),
        ("item", "file:///etc/passwd"),
        ("item", "http://10.0.0.1/items/x.json"),
        ("item", "items/cat-0.json"),
    ])  # fmt: skip
    sub = catalog("sub", [("child", "../catalog.json")])  # back to the root
    url = served_item(server, "/catalog.json", root)
    served_item(server, "/sub/catalog.json", sub)
    served_item(server, "/items/cat-0.json", item)
    spec = tmp_path / "job.yaml"
    spec.write_text(f"name: t\nscenes:\n  stac_catalog: {url}\n{JOB_TAIL}")
    try:
        loaded = RegionalJob.load(spec)
    finally:
        server.close()
    good = f"{server.url}/items/cat-0.json"
    assert set(loaded.scenes) == {"file:///etc/passwd", "http://10.0.0.1/items/x.json", good}
    assert loaded.store_for(good).name == "cat-0.labels.zarr"
    assert good not in loaded.problems
    assert {loaded.store_for(s).parent for s in loaded.scenes} == {loaded.output_root}
    assert "refused (a local file)" in loaded.problems["file:///etc/passwd"]
    assert "private address" in loaded.problems["http://10.0.0.1/items/x.json"]
    assert server.requests.count("/catalog.json") == 1  # the cycle is walked once
    with pytest.raises(InputError, match="refused"):  # such a scene fails, unread
        loaded.request("file:///etc/passwd")


# ----------------------------------------------------------------------------- item 3


def test_one_bad_item_fails_only_its_own_scene(tmp_path, capsys):
    api = StacApi("aerial")
    good = write_tif(tmp_path / "good.tif", 356000.0, 4)
    other = write_tif(tmp_path / "other.tif", 356100.0, 5)
    api.add(make_item("../../x", good), name="escaper")  # an id that would leave the root
    api.add(make_item("bands-only", other, {"B04": "data"}))  # no visual asset
    api.add(make_item("gone", other), gone=True)  # listed, but its self link answers 404
    spec = search_spec(tmp_path, api.url)
    try:
        assert h.job_status("run", spec) == 1  # some scene failed; the job itself is fine
    finally:
        api.close()
    root = tmp_path / "labels"
    index = json.loads((root / "index.json").read_text())
    got = {Path(e["store"]).name: e for e in index["scenes"]}
    (done,) = [name for name, e in got.items() if e["status"] == "done"]
    assert re.fullmatch(r"x-[0-9a-f]{12}\.labels\.zarr", done), done
    assert got["bands-only.labels.zarr"]["status"] == "failed"
    assert "no RGB/visual asset" in got["bands-only.labels.zarr"]["message"]
    assert got["gone.labels.zarr"]["status"] == "failed"
    assert "HTTP 404" in got["gone.labels.zarr"]["message"]
    assert index["counts"] == {"done": 1, "resumed": 0, "skipped": 0, "failed": 2}
    assert [p.parent for p in tmp_path.rglob("*.labels.zarr")] == [root]
    # the good Item's relative asset href, joined on its own URL, was read from the API
    assert store.read_attrs(root / done)["scene"] == f"/vsicurl/{api.url}/data/good.tif"
    assert labels_of(root / done).shape == (64, 64)
    err = capsys.readouterr().err
    assert err.count("scene failed:") == 2


# ----------------------------------------------------------------------------- item 5


@pytest.mark.timeout(60)
def test_a_job_spec_with_yaml_aliases_is_refused_at_once(tmp_path, capsys):
    """A "billion laughs" spec: nine lines that stand for 10**9 strings."""
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    lines += ["name: bomb", "scenes: {list: [x.tif]}", "classes: building", "output_root: out"]
    spec = tmp_path / "bomb.yaml"
    spec.write_text("\n".join(lines) + "\n")
    start = time.monotonic()
    assert h.job_status("validate", spec) == 2
    err = capsys.readouterr().err.strip()
    assert time.monotonic() - start < 10
    assert len(err.splitlines()) == 1, err
    assert f"job spec {spec}: line 2: YAML aliases (*a0) are not allowed" in err, err


def test_intersects_has_a_bounded_number_of_vertices(tmp_path, capsys):
    angles = np.linspace(0, 2 * np.pi, MAX_INTERSECTS_VERTICES + 1, endpoint=False)
    ring = [[7 + np.cos(a), 51 + np.sin(a)] for a in angles]
    ring.append(ring[0])
    geometry = json.dumps({"type": "Polygon", "coordinates": [ring]})
    spec = tmp_path / "job.yaml"
    spec.write_text(
        "name: t\nscenes:\n  stac_search:\n    url: http://127.0.0.1:9/\n"
        f"    intersects: {geometry}\n{JOB_TAIL}"
    )
    assert h.job_status("validate", spec) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and len(err) < 600, err
    assert "'scenes.stac_search.intersects'" in err and "vertices" in err, err


# ----------------------------------------------------------------------------- item 2: what
# a remote Item's asset may be, where its hrefs lead, what a connection may reach


def redirect_to(location: str):
    def route(handler, query) -> None:
        handler.send_response(302)
        handler.send_header("Location", location)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    return route


def catalog_doc(name: str, links: list[tuple[str, str]]) -> dict:
    return {
        "type": "Catalog", "stac_version": "1.0.0", "id": name, "description": name,
        "links": [{"rel": rel, "href": href} for rel, href in links],
    }  # fmt: skip


@pytest.mark.timeout(120)
def test_a_remote_vrt_asset_is_refused_and_its_sources_are_never_opened(
    tmp_path, capsys, monkeypatch
):
    """Private hosts allowed by the operator, so only the driver rule is at stake: a VRT
    whose bands come from a local GeoTIFF and from another host is never opened as one."""
    monkeypatch.setenv(ALLOW, "1")
    secret = write_tif(tmp_path / "secret.tif", 356000.0, 1)
    item = make_item("x", secret).to_dict(include_self_link=False)
    item["assets"]["visual"]["href"] = "../data/x.vrt"
    os.utime(secret, (0, secret.stat().st_mtime))  # a read from now on moves atime (relatime)
    server, other = Server(), Server()
    try:
        other_url = other.file(write_tif(tmp_path / "other.tif", 356000.0, 2))
        sources = [str(secret), str(secret), f"/vsicurl/{other_url}"]
        bands = "".join(
            f'<VRTRasterBand dataType="Byte" band="{i}"><SimpleSource><SourceFilename '
            f'relativeToVRT="0">{src}</SourceFilename><SourceBand>1</SourceBand>'
            "</SimpleSource></VRTRasterBand>"
            for i, src in enumerate(sources, 1)
        )
        vrt = tmp_path / "served" / "x.vrt"
        vrt.parent.mkdir()
        vrt.write_text(f'<VRTDataset rasterXSize="64" rasterYSize="64">{bands}</VRTDataset>')
        server.file(vrt)
        url = served_item(server, "/items/x.json", item)
        out = tmp_path / "out.labels.zarr"
        err = h.fails_with_one_line(capsys, "run", url, *RUN, "--out", out)
    finally:
        server.close()
        other.close()
    assert f"error: {server.url}/data/x.vrt: not opened as a GeoTIFF/COG" in err, err
    assert "never as a VRT" in err, err
    assert secret.stat().st_atime == 0  # the local source was never read
    assert other.requests == [] and not out.exists()


def test_the_api_reader_reads_a_relative_href_from_the_api_not_a_local_file(tmp_path, monkeypatch):
    from reattn_batch.regional.catalogue import _api_io

    server = Server()
    served_item(server, "/api/local.json", {"read": "from the API"})
    (tmp_path / "local.json").write_text('{"read": "from the local file"}')
    monkeypatch.chdir(tmp_path)
    try:
        io = _api_io(f"{server.url}/api/")
        assert json.loads(io.read_text("local.json")) == {"read": "from the API"}
        with pytest.raises(InputError, match="refused"):
            io.read_text(f"file://{tmp_path / 'local.json'}")
    finally:
        server.close()
    assert server.requests == ["/api/local.json"]


def test_a_host_found_public_is_refused_when_its_connection_reaches_a_private_address(
    monkeypatch,
):
    """DNS rebinding: the name answers a public address to the check, loopback to the
    connection. Without DNS control here, the check's answer is stubbed (``_addresses``);
    the connection is real (localhost -> 127.0.0.1), and it sends nothing."""
    from collections import OrderedDict

    from reattn_batch.scene import href_policy
    from reattn_batch.scene.href_policy import DOCUMENT_SCHEMES
    from reattn_batch.scene.stac_io import fetch

    monkeypatch.setattr(href_policy, "_NAMED", OrderedDict(), raising=False)
    monkeypatch.setattr(href_policy, "_PUBLIC", type(href_policy._PUBLIC)())
    monkeypatch.setattr(href_policy, "_addresses", lambda host, port: ["93.184.215.14"])
    server = Server()
    served_item(server, "/items/x.json", {"id": "x"})
    try:
        port = server.url.rsplit(":", 1)[1]
        named = f"http://localhost:{port}/items/x.json"
        doc = "https://catalogue.example/catalog.json"
        assert check_href(named, doc, what="item link", schemes=DOCUMENT_SCHEMES) == named
        with pytest.raises(InputError, match=r"reached 127\.0\.0\.1, a loopback address"):
            fetch(named)
        assert server.requests == []  # refused before a byte was sent
        # the address the user names is theirs: read; and the operator may allow all
        assert json.loads(fetch(f"{server.url}/items/x.json")[0]) == {"id": "x"}
        monkeypatch.setenv(ALLOW, "1")
        assert json.loads(fetch(named)[0]) == {"id": "x"}
    finally:
        server.close()


@pytest.mark.timeout(120)
def test_root_relative_hrefs_of_a_remote_document_are_paths_on_its_own_origin(tmp_path):
    from reattn_batch.regional.catalogue import catalog_items
    from reattn_batch.scene import open_scene

    tif = write_tif(tmp_path / "scene.tif", 356000.0, 7)
    server = Server()
    server.file(tif)
    item = make_item("x", tif).to_dict(include_self_link=False)
    item["assets"]["visual"]["href"] = "/data/scene.tif"  # on the Item's host, not this disk
    url = served_item(server, "/collections/c/items/x", item)
    served_item(server, "/catalog.json", catalog_doc("root", [("item", "/collections/c/items/x")]))
    local_item = tmp_path / "local.json"  # the user's own Item: an absolute path is local
    save_item(make_item("y", tif), local_item)
    try:
        scene = open_scene(url)
        (listed,) = catalog_items(f"{server.url}/catalog.json")
    finally:
        server.close()
    assert scene.path == f"/vsicurl/{server.url}/data/scene.tif"
    assert listed.href == url and listed.problem is None
    assert open_scene(str(local_item)).path == str(tif.absolute())


@pytest.mark.timeout(120)
def test_relative_hrefs_are_joined_on_the_url_that_answered_after_redirects(tmp_path):
    from reattn_batch.regional.catalogue import catalog_items
    from reattn_batch.scene import open_scene

    tif = write_tif(tmp_path / "scene.tif", 356000.0, 8)
    server = Server()
    server.file(tif, "/new/data/scene.tif")
    item = make_item("x", tif).to_dict(include_self_link=False)
    item["assets"]["visual"]["href"] = "../data/scene.tif"
    served_item(server, "/new/items/x.json", item)
    served_item(server, "/new/catalog.json", catalog_doc("root", [("item", "items/a.json")]))
    server.routes["/old/items/x.json"] = redirect_to(f"{server.url}/new/items/x.json")
    server.routes["/old/catalog.json"] = redirect_to("/new/catalog.json")  # a relative one
    try:
        scene = open_scene(f"{server.url}/old/items/x.json")
        (listed,) = catalog_items(f"{server.url}/old/catalog.json")
    finally:
        server.close()
    assert scene.path == f"/vsicurl/{server.url}/new/data/scene.tif"
    assert listed.href == f"{server.url}/new/items/a.json"


@pytest.mark.timeout(120)
def test_an_upper_case_scheme_is_a_url_for_items_and_rasters(tmp_path):
    from reattn_batch.scene import open_scene

    tif = write_tif(tmp_path / "scene.tif", 356000.0, 9)
    server = Server()
    url = server.file(tif)
    item = make_item("x", tif).to_dict(include_self_link=False)
    item["assets"]["visual"]["href"] = "../data/scene.tif"
    served_item(server, "/items/x.json", item)
    upper = server.url.replace("http://", "HTTP://")
    try:
        from_item = open_scene(f"{upper}/items/x.json")
        direct = open_scene(upper + url[len(server.url) :])
    finally:
        server.close()
    assert from_item.stac_item == f"{upper}/items/x.json"
    assert from_item.path == direct.path == f"/vsicurl/{url}"


# ----------------------------------------------------------------------------- listings


@pytest.mark.timeout(60)
def test_a_static_catalog_is_listed_without_reading_its_items(tmp_path):
    """Only the catalog is read (so every cron run lists all of it quickly); its Items'
    stores are named by their file names, told apart by a hash where two share one."""
    server = Server()
    links = [("item", "S2A_1/S2A_1.json"), ("item", "a/item.json"), ("item", "b/item.json")]
    url = served_item(server, "/catalog.json", catalog_doc("root", links))
    spec = tmp_path / "job.yaml"
    spec.write_text(f"name: t\nscenes:\n  stac_catalog: {url}\n{JOB_TAIL}")
    try:
        loaded = RegionalJob.load(spec)
    finally:
        server.close()
    assert server.requests == ["/catalog.json"]
    with pytest.raises(KeyError):  # not a scene of the job: nothing is read to name it
        loaded.store_for(f"{server.url}/other.json")
    names = [loaded.store_for(s).name for s in loaded.scenes]
    assert names[0] == "S2A_1.labels.zarr"
    assert all(re.fullmatch(r"item-[0-9a-f]{12}\.labels\.zarr", n) for n in names[1:])
    assert len(set(names)) == 3 and not loaded.problems


def collection_feature(server: Server, item_id: str, collection: str) -> dict:
    return {
        **feature(server, item_id), "collection": collection,
        "links": [{"rel": "self", "href": f"{server.url}/{collection}/{item_id}.json"}],
    }  # fmt: skip


@pytest.mark.timeout(60)
def test_items_of_two_collections_that_share_an_id_are_both_listed(tmp_path):
    def search(server, handler, query) -> None:
        features = [
            collection_feature(server, "x", "c1"),
            collection_feature(server, "x", "c2"),
            collection_feature(server, "y", "c1"),
            collection_feature(server, "y", "c1"),  # the same Item twice: listed once
        ]
        reply(handler, {"type": "FeatureCollection", "features": features, "links": []})

    server = api_server(search)
    try:
        loaded = RegionalJob.load(search_spec(tmp_path, server.url))
    finally:
        server.close()
    stores = {s.removeprefix(server.url): loaded.store_for(s).name for s in loaded.scenes}
    assert stores == {
        "/c1/x.json": "c1__x.labels.zarr",
        "/c2/x.json": "c2__x.labels.zarr",
        "/c1/y.json": "y.labels.zarr",
    }


@pytest.mark.timeout(120)
def test_a_listing_warns_only_when_the_catalogue_holds_more_than_its_cap(tmp_path, caplog):
    from reattn_batch.regional.catalogue import catalog_items

    count = {"n": 3}

    def search(server, handler, query) -> None:
        features = [feature(server, f"i{i}") for i in range(count["n"])]
        reply(handler, {"type": "FeatureCollection", "features": features, "links": []})

    api = api_server(search)
    spec = tmp_path / "job.yaml"
    spec.write_text(
        f"name: t\nscenes:\n  stac_search:\n    url: {api.url}\n    max_items: 3\n{JOB_TAIL}"
    )
    static = Server()
    links = [("item", f"items/{i}.json") for i in range(DEFAULT_MAX_ITEMS)]
    url = served_item(static, "/catalog.json", catalog_doc("root", links))
    try:
        with caplog.at_level(logging.WARNING):
            assert len(RegionalJob.load(spec).scenes) == 3  # exactly max_items: all
            assert len(catalog_items(url)) == DEFAULT_MAX_ITEMS  # exactly the cap: all
            assert "stopped" not in caplog.text, caplog.text
            count["n"] = 4
            links.append(("item", "items/one-more.json"))
            served_item(static, "/catalog.json", catalog_doc("root", links))
            assert len(RegionalJob.load(spec).scenes) == 3
            assert len(catalog_items(url)) == DEFAULT_MAX_ITEMS
    finally:
        api.close()
        static.close()
    lines = [r.getMessage() for r in caplog.records]
    search_line, static_line = [line for line in lines if "stopped" in line]
    assert "stopped at 3 Items (max_items)" in search_line
    assert "raise scenes.stac_search.max_items" in search_line
    assert f"stopped at {DEFAULT_MAX_ITEMS} Items and catalogs" in static_line
    assert "stac_search" not in static_line and "sub-catalogs" in static_line


@pytest.mark.timeout(300)
def test_view_opens_a_remote_items_asset_as_a_geotiff_only(tmp_path, monkeypatch):
    """A store mapped from a remote Item records the asset's URL; when the server later
    answers that URL with a VRT naming a local file, `view` does not open it as one (the
    labels are shown without imagery, and the local file is never read)."""
    from reattn_batch.viewer.store_view import StoreView

    monkeypatch.setenv(ALLOW, "1")  # loopback servers: only the driver rule is at stake
    secret = write_tif(tmp_path / "secret.tif", 356000.0, 11)
    asset = write_tif(tmp_path / "asset.tif", 356000.0, 12)
    item = make_item("x", asset).to_dict(include_self_link=False)
    item["assets"]["visual"]["href"] = "../data/x.tif"
    server = Server()
    server.file(asset, "/data/x.tif")
    url = served_item(server, "/items/x.json", item)
    out = tmp_path / "x.labels.zarr"
    vrt = tmp_path / "x.vrt"
    vrt.write_text(
        '<VRTDataset rasterXSize="64" rasterYSize="64"><VRTRasterBand dataType="Byte" '
        f'band="1"><SimpleSource><SourceFilename relativeToVRT="0">{secret}</SourceFilename>'
        "<SourceBand>1</SourceBand></SimpleSource></VRTRasterBand></VRTDataset>"
    )
    try:
        main(["run", url, *RUN, "--out", str(out)])
        assert StoreView(out).imagery is not None  # the GeoTIFF it was mapped from
        server.files["/data/x.tif"] = vrt  # the same URL now answers a VRT
        os.utime(secret, (0, secret.stat().st_mtime))  # a read from now on moves atime
        proc = h.start("view", out, "--port", "0")  # a new process: no handle cached
        try:
            line, deadline = "", time.monotonic() + 120
            while "http://" not in line and time.monotonic() < deadline:
                line = proc.stdout.readline()
                if not line and proc.poll() is not None:
                    break
        finally:
            result = h.finish(proc, timeout=30)
    finally:
        server.close()
    assert "http://127.0.0.1:" in line, result.stderr[-3000:]
    assert "imagery unavailable" in result.stderr, result.stderr[-3000:]
    assert "not opened as a GeoTIFF/COG" in result.stderr, result.stderr[-3000:]
    assert secret.stat().st_atime == 0


def test_a_missing_remote_asset_is_named_as_missing_not_as_a_wrong_format(tmp_path, capsys):
    """A remote Item's asset that answers 404: the line says it could not be opened and to
    check the URL; the format rule is named only for a file of another format."""
    tif = write_tif(tmp_path / "scene.tif", 356000.0, 13)
    item = make_item("x", tif).to_dict(include_self_link=False)
    item["assets"]["visual"]["href"] = "../data/gone.tif"
    server = Server()
    url = served_item(server, "/items/x.json", item)
    try:
        err = h.fails_with_one_line(capsys, "run", url, *RUN, "--out", tmp_path / "o.zarr")
    finally:
        server.close()
    assert "gone.tif: could not open it" in err and "check the URL" in err, err
    assert "GeoTIFF/COG" not in err, err
