"""The viewer's HTTP request handler: routes, the access checks and the response headers.

Routes (GET and HEAD only; other methods get 405, unknown paths 404)::

    /                                   the page (static/index.html)
    /static/<name>                      a file of the fixed allow-list STATIC
    /api/info                           the run, the classes with their areas, the bounds
    /api/pixel?lon=..&lat=..            class and confidence of the store pixel there
    /tiles/labels/<z>/<x>/<y>.png       labels coloured; ?classes=0,2 draws only those
    /tiles/scene/<z>/<x>/<y>.png        the scene's imagery

When the server is bound off the loopback every route is under ``/t/<token>/``
(``access.py``), and the page asks for everything relative to its own URL. No part of a
request path reaches the file system (static files are looked up by exact name in
memory); tiles and answers come from the one ``StoreView`` the handler is bound to. A
request whose ``Host`` is not allowed or whose token is missing gets 403; a request the
handler does not read to its end (a body, a method other than GET or HEAD) gets its answer
and then the connection is closed, so no body is read as the next request. Every response
says ``nosniff``, ``no-referrer`` and the page's Content Security Policy.
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

from reattn_batch.viewer.access import Access
from reattn_batch.viewer.limits import ConnectionSlots
from reattn_batch.viewer.static_files import STATIC
from reattn_batch.viewer.store_view import StoreView
from reattn_batch.viewer.tile_grid import valid_tile

log = logging.getLogger("reattn_batch")

#: Everything the page loads comes from this server (a CDN request would be refused and
#: reported in the browser's console).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'none'"
)

_TILE = re.compile(r"/tiles/(labels|scene)/(\d{1,2})/(\d{1,8})/(\d{1,8})\.png")


_refused_names: set[str] = set()


def _refused_host(header: str | None) -> None:
    """Log a refused Host once per name (at most 20 names, so a flood cannot fill the log)."""
    name = header or ""
    if name in _refused_names or len(_refused_names) >= 20:
        return
    _refused_names.add(name)
    log.warning(
        "viewer: refused a request for Host %r (not the loopback, the bound address or an "
        "allowed host name)",
        header,
    )


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


def make_handler(
    viewer: StoreView, access: Access, slots: ConnectionSlots, request_timeout: float
) -> type[BaseHTTPRequestHandler]:
    """A request handler class bound to ``viewer``: it answers the requests ``access``
    allows, tells ``slots`` when its connection waits for a request and when it answers
    one, and closes a connection whose read or write stalls for ``request_timeout`` s."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "reattn-batch-view"
        sys_version = ""
        protocol_version = "HTTP/1.1"

        timeout = request_timeout  # the socket's (StreamRequestHandler.setup)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            log.debug("%s %s", self.address_string(), format % args)

        def parse_request(self) -> bool:
            ok = super().parse_request()
            slots.answering(self.connection)  # a whole request head came: keep the slot
            return ok

        def handle_one_request(self) -> None:
            super().handle_one_request()
            slots.waiting(self.connection)

        def _unread_body(self) -> bool:
            """Whether the request announced a body (never read: the handler serves GET)."""
            length = self.headers.get("Content-Length", "0").strip()
            return length != "0" or "Transfer-Encoding" in self.headers

        def _send(
            self,
            status: int,
            body: bytes,
            ctype: str,
            cache: str = "no-store",
            close: bool = False,
            extra: dict[str, str] | None = None,
        ) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", cache)
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Referrer-Policy", "no-referrer")
            self.send_header("Content-Security-Policy", CONTENT_SECURITY_POLICY)
            for key, value in (extra or {}).items():
                self.send_header(key, value)
            if close or self._unread_body():
                self.send_header("Connection", "close")  # sets self.close_connection
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _error(
            self,
            status: HTTPStatus,
            text: str | None = None,
            close: bool = False,
            extra: dict[str, str] | None = None,
        ) -> None:
            body = f"{status.value} {text or status.phrase}\n".encode()
            self._send(status, body, "text/plain; charset=utf-8", close=close, extra=extra)

        def _json(self, value: Any) -> None:
            body = json.dumps(value, allow_nan=False).encode()
            self._send(HTTPStatus.OK, body, "application/json")

        def do_HEAD(self) -> None:  # noqa: N802
            self.do_GET()

        def do_GET(self) -> None:  # noqa: N802
            if not access.host_allowed(self.headers.get("Host")):
                _refused_host(self.headers.get("Host"))
                self._error(HTTPStatus.FORBIDDEN, "Forbidden (Host is not allowed)", close=True)
                return
            parts = urlsplit(self.path)
            path = access.route_path(parts.path)
            if path is None:
                text = "Forbidden (open the URL the viewer printed, with its token)"
                self._error(HTTPStatus.FORBIDDEN, text, close=True)
                return
            if path == "":  # the token without the slash after it
                self._error(HTTPStatus.MOVED_PERMANENTLY, extra={"Location": access.base})
                return
            query = parse_qs(parts.query, keep_blank_values=True)
            try:
                self._route(path, query)
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                self.close_connection = True
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
            extra = {"Allow": "GET, HEAD"}
            self._error(HTTPStatus.METHOD_NOT_ALLOWED, close=True, extra=extra)

        do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed  # noqa: N815

    return Handler
