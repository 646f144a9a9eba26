"""`reattn-batch view` off the loopback and under abuse: the Host allow-list, the URL token
of a non-loopback bind, the bounds on connections (half-sent requests), a request body
never read as the next request, class names as text in the page, the CSP. Real servers on
loopback (the CLI in a subprocess, or make_server in a thread), raw sockets, real signals,
and the real page in headless Chromium (the helpers and the browser of test_viewer.py)."""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import socket
import subprocess
import sys
import threading
import time

import pytest
import test_viewer
from pyproj import Transformer
from test_viewer import (
    REGIONS,
    ROOT,
    TRANSFORM,
    make_store,
    raw_get,
    start_server,
    stop_server,
    wait_idle,
)

browser = test_viewer.browser  # headless Chromium, one per module


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("viewer-access"))


def port_and_path(url: str) -> tuple[int, str]:
    """(port, path) of a URL the viewer printed."""
    port, path = re.fullmatch(r"http://[^/]+:(\d+)(/.*)", url).groups()
    return int(port), path


def exchange(port: int, data: bytes, wait_s: float = 5) -> tuple[bytes, bool]:
    """Send ``data`` on one connection; (all the server sent back, whether it closed the
    connection within ``wait_s`` seconds of its last byte)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as sock:
        sock.sendall(data)
        got = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                return got, False
            except ConnectionResetError:
                return got, True
            if not chunk:
                return got, True
            got += chunk


def statuses(data: bytes) -> list[int]:
    """The status codes of the HTTP responses in ``data``, in order."""
    return [int(code) for code in re.findall(rb"^HTTP/1\.[01] (\d{3}) ", data, re.MULTILINE)]


# ----------------------------------------------------------------------------- access


def test_off_the_loopback_it_warns_and_answers_only_the_url_with_its_token(planted, browser):
    """Bound to 0.0.0.0: a warning, a token in the printed URL; without it (or with a
    wrong one) 403, with it the page works in Chromium; a Host outside the allow-list is
    refused even with the token, a name given with --allow-host is answered."""
    from selenium.webdriver.common.by import By

    proc, url = start_server(planted, "--host", "0.0.0.0", "--allow-host", "Viewer.Example")
    try:
        port, path = port_and_path(url)
        token = re.fullmatch(r"/t/([A-Za-z0-9_-]+)/", path)
        assert token is not None and len(token.group(1)) >= 32, url
        token = token.group(1)
        local = f"http://127.0.0.1:{port}/"
        for bad in ("/api/info", "/", "/static/app.js", "/t/x/api/info", f"/t/{token[:-1]}/"):
            assert raw_get(local, bad)[0] == 403, bad
        status, body = raw_get(local, f"/t/{token}/api/info")
        assert status == 200 and b'"classes"' in body
        assert raw_get(local, f"/t/{token}")[0] == 301  # to the URL with its slash
        assert raw_get(local, f"/t/{token}/api/info", host=f"evil.example:{port}")[0] == 403
        assert raw_get(local, f"/t/{token}/api/info", host=f"viewer.example:{port}")[0] == 200

        browser.get(f"{local}t/{token}/")
        wait_idle(browser)
        assert len(browser.find_elements(By.CSS_SELECTOR, ".legend-row")) == 4
        errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
        assert errors == []
        browser.get(local)
        assert "403" in browser.find_element(By.TAG_NAME, "body").text
    finally:
        code, out, err = stop_server(proc)
    assert code == 0 and "Traceback" not in err, err
    assert "other machines can reach" in err and "0.0.0.0" in err, err


def test_on_the_loopback_the_host_allow_list_takes_extra_names_and_refusals_close(planted):
    """No token on the loopback; --allow-host adds a name (any case, any port); any other
    Host gets 403 and the connection is closed (a second request on it is not answered)."""
    proc, url = start_server(planted, "--allow-host", "viewer.example", "--allow-host", "[::1]")
    try:
        port, path = port_and_path(url)
        assert path == "/"
        assert raw_get(url, "/api/info", host="VIEWER.example:8080")[0] == 200
        assert raw_get(url, "/api/info", host=f"[::1]:{port}")[0] == 200
        for host in ("evil.example", "viewer.example.evil.example", "", "[bad"):
            again = b"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            data, closed = exchange(
                port, f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode() + again
            )
            assert statuses(data) == [403] and closed, (host, data)
    finally:
        stop_server(proc)


def test_a_bad_allow_host_is_one_line(planted):
    result = subprocess.run(
        [sys.executable, "-m", "reattn_batch", "view", str(planted), "--allow-host", "http://x:80"],
        capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "--allow-host http://x:80 is not a host name" in result.stderr, result.stderr


# ----------------------------------------------------------------------------- limits


def test_half_sent_requests_hold_a_bounded_number_of_threads_and_are_closed(planted):
    """300 connections that send half a request line and wait: the server's threads stay
    within its connection cap, a normal request is still answered before the request
    timeout, and the server closes every one of the 300 (at the latest at the timeout)."""
    from reattn_batch.viewer.server import make_server
    from reattn_batch.viewer.store_view import StoreView

    timeout, cap = 3.0, 16
    server = make_server(StoreView(planted), request_timeout=timeout, max_connections=cap)
    before = threading.active_count()
    serving = threading.Thread(target=server.serve_forever, args=(0.1,), daemon=True)
    serving.start()
    port = server.server_address[1]
    held: list[socket.socket] = []
    try:
        peak = 0
        for _ in range(300):
            sock = socket.create_connection(("127.0.0.1", port), timeout=30)
            sock.sendall(b"GET /api/info HTT")
            held.append(sock)
            peak = max(peak, threading.active_count())
        started = time.monotonic()
        while time.monotonic() < started + 1:
            peak = max(peak, threading.active_count())
            time.sleep(0.01)
        # the connections' threads (one ending as the next starts), serve_forever's
        assert peak - before <= cap + 4, f"{peak - before} threads for 300 half-sent requests"

        asked = time.monotonic()
        assert raw_get(f"http://127.0.0.1:{port}/", "/api/info")[0] == 200
        assert time.monotonic() - asked < timeout

        deadline = time.monotonic() + timeout + 15
        for sock in held:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ConnectionResetError):
                assert sock.recv(1) == b""  # closed without an answer
    finally:
        for sock in held:
            sock.close()
        server.shutdown()
        server.server_close()


def test_a_405_closes_the_connection_so_its_body_is_not_a_request(server):
    """A POST (or a GET) whose body looks like a request, on a keep-alive connection: one
    answer (405, or the GET's 200), then the connection is closed."""
    port, _ = port_and_path(server)
    inner = b"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    for method, expected in (("POST", 405), ("PUT", 405), ("GET", 200)):
        head = f"{method} /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(inner)}"
        data, closed = exchange(port, head.encode() + b"\r\n\r\n" + inner)
        assert statuses(data) == [expected] and closed, (method, data[:400])
        if expected == 405:
            assert b"\r\nAllow: GET, HEAD\r\n" in data


@pytest.fixture(scope="module")
def server(planted):
    proc, url = start_server(planted)
    yield url
    if proc.poll() is None:
        stop_server(proc)


# ----------------------------------------------------------------------------- the page


def test_every_response_forbids_forms_and_keeps_the_policy(server):
    """Content-Security-Policy with form-action 'none' (and the rest), no Referer sent."""
    port, _ = port_and_path(server)
    for path in ("/", "/static/app.js", "/api/info", "/tiles/labels/1/0/0.png", "/nope"):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        conn.close()
        assert response.getheader("Referrer-Policy") == "no-referrer", path
        policy = [p.strip() for p in response.getheader("Content-Security-Policy").split(";")]
        for directive in (
            "form-action 'none'", "default-src 'self'", "script-src 'self'",
            "object-src 'none'", "base-uri 'none'", "frame-ancestors 'none'",
        ):  # fmt: skip
            assert directive in policy, (path, policy)


HOSTILE = ["background", "<img src=x onerror=window.pwned=1>", "<b>bold</b>", "water"]


def test_class_names_are_text_in_the_popup_and_the_legend(tmp_path, browser):
    """A store whose class names are HTML: the click popup and the legend show them as
    written, and no element of theirs is created."""
    from selenium.webdriver.common.by import By

    store = make_store(tmp_path, class_names=HOSTILE)
    proc, url = start_server(store)
    try:
        browser.get_log("browser")  # what earlier tests left there
        browser.get(url)
        wait_idle(browser)
        to_degrees = Transformer.from_crs(32632, 4326, always_xy=True)
        for value in (1, 2):
            rows, cols = REGIONS[value]
            lon, lat = to_degrees.transform(
                *(TRANSFORM @ ((cols.start + cols.stop) / 2, (rows.start + rows.stop) / 2))
            )
            browser.execute_script(
                "viewer.state.map.fire('click', {latlng: L.latLng(arguments[0], arguments[1])})",
                lat,
                lon,
            )
            deadline = time.monotonic() + 20
            popup = ""
            while not popup.startswith(HOSTILE[value]):
                assert time.monotonic() < deadline, popup
                time.sleep(0.1)
                found = browser.find_elements(By.CSS_SELECTOR, ".leaflet-popup-content")
                popup = found[0].text if found else ""
            created = browser.execute_script(
                "return document.querySelectorAll('.leaflet-popup-content img,"
                " .leaflet-popup-content b, #panel img, #panel b').length"
            )
            assert created == 0
        names = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".legend-row .name")]
        assert names == HOSTILE
        assert browser.execute_script("return window.pwned") is None
        errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
        assert errors == []
    finally:
        stop_server(proc)
