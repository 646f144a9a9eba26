"""The viewer's HTTP request handler: routes, the Host check and the response headers.

Routes (GET and HEAD only; other methods get 405, unknown paths 404)::

    /                                   the page (static/index.html)
    /static/<name>                      a file of the fixed allow-list STATIC
    /api/info                           the run, the classes with their areas, the bounds
    /api/pixel?lon=..&lat=..            class and confidence of the store pixel there
    /tiles/labels/<z>/<x>/<y>.png       labels coloured; ?classes=0,2 draws only those
    /tiles/scene/<z>/<x>/<y>.png        the scene's imagery

No part of a request path reaches the file system (static files are looked up by exact
name in memory); tiles and answers come from the one ``StoreView`` the handler is bound
to. With ``check_host`` (a loopback address) the ``Host`` header must name the loopback
too (DNS-rebinding guard). Every response says ``nosniff`` and the page's Content
Security Policy.
"""

from __future__ import annotations

import json
import logging
import math
import re
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from reattn_batch.viewer.static_files import STATIC
from reattn_batch.viewer.store_view import StoreView
from reattn_batch.viewer.tile_grid import valid_tile

log = logging.getLogger("reattn_batch")

#: Everything the page loads comes from this server (a CDN request would be refused and
#: reported in the browser's console).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)

_TILE = re.compile(r"/tiles/(labels|scene)/(\d{1,2})/(\d{1,8})/(\d{1,8})\.png")
_LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


def _visible(query: dict[str, list[str]], n: int) -> set[int] | None:
    """The ``classes`` query parameter: None (absent: all), else a set of class indices."""
    if "classes" not in query:
        return None
    text = query["classes"][-1].strip()
    if not text:
        return set()
    out = set()
    for part in text.split(","):
        if not part.isdigit() or int(part) >= n:
            raise ValueError(part)
        out.add(int(part))
    return out


def make_handler(viewer: StoreView, check_host: bool) -> type[BaseHTTPRequestHandler]:
    """A request handler class bound to ``viewer``."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "reattn-batch-view"
        sys_version = ""
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            log.debug("%s %s", self.address_string(), format % args)

        def _send(self, status: int, body: bytes, ctype: str, cache: str = "no-store") -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", cache)
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Content-Security-Policy", CONTENT_SECURITY_POLICY)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _error(self, status: HTTPStatus, text: str | None = None) -> None:
            body = f"{status.value} {text or status.phrase}\n".encode()
            self._send(status, body, "text/plain; charset=utf-8")

        def _json(self, value: Any) -> None:
            body = json.dumps(value, allow_nan=False).encode()
            self._send(HTTPStatus.OK, body, "application/json")

        def _host_ok(self) -> bool:
            host = self.headers.get("Host", "")
            name = urlsplit(f"//{host}").hostname or ""
            return name in _LOOPBACK_NAMES

        def do_HEAD(self) -> None:  # noqa: N802
            self.do_GET()

        def do_GET(self) -> None:  # noqa: N802
            if check_host and not self._host_ok():
                self._error(HTTPStatus.FORBIDDEN, "Forbidden (Host is not the loopback)")
                return
            parts = urlsplit(self.path)
            path, query = parts.path, parse_qs(parts.query, keep_blank_values=True)
            try:
                self._route(path, query)
            except (BrokenPipeError, ConnectionResetError):
                pass
            except Exception:
                log.warning("viewer: %s failed", path, exc_info=True)
                self._error(HTTPStatus.INTERNAL_SERVER_ERROR)

        def _route(self, path: str, query: dict[str, list[str]]) -> None:
            if path in ("/", "/index.html"):
                self._send(HTTPStatus.OK, viewer.static["index.html"], STATIC["index.html"])
                return
            if path.startswith("/static/"):
                name = path[len("/static/") :]
                if name in STATIC and name != "index.html":
                    self._send(HTTPStatus.OK, viewer.static[name], STATIC[name], "max-age=3600")
                else:
                    self._error(HTTPStatus.NOT_FOUND)
                return
            if path == "/api/info":
                self._json(viewer.page_info)
                return
            if path == "/api/pixel":
                try:
                    lon, lat = float(query["lon"][-1]), float(query["lat"][-1])
                except (KeyError, ValueError):
                    self._error(HTTPStatus.BAD_REQUEST, "pass lon= and lat= in degrees")
                    return
                if not (math.isfinite(lon) and math.isfinite(lat)):
                    self._error(HTTPStatus.BAD_REQUEST, "lon and lat must be finite")
                    return
                self._json(viewer.pixel(lon, lat))
                return
            match = _TILE.fullmatch(path)
            if match is None:
                self._error(HTTPStatus.NOT_FOUND)
                return
            kind = match.group(1)
            z, x, y = (int(v) for v in match.group(2, 3, 4))
            if not valid_tile(z, x, y):
                self._error(HTTPStatus.NOT_FOUND)
                return
            if kind == "labels":
                try:
                    visible = _visible(query, viewer.n_classes)
                except ValueError as exc:
                    self._error(HTTPStatus.BAD_REQUEST, f"classes: {exc} is not a class index")
                    return
                body = viewer.label_png(z, x, y, visible)
            else:
                body = viewer.scene_png(z, x, y)
                if body is None:
                    self._error(HTTPStatus.NOT_FOUND, "no imagery")
                    return
            self._send(HTTPStatus.OK, body, "image/png", "no-cache")

        def _not_allowed(self) -> None:
            self._error(HTTPStatus.METHOD_NOT_ALLOWED)

        do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed  # noqa: N815

    return Handler
