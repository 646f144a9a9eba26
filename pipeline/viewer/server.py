"""The viewer's HTTP server: one label store (and its scene) on a local web page.

Routes (GET only; anything else is 404, or 405 for other methods)::

    /                                   the page (static/index.html)
    /static/<name>                      a file of the fixed allow-list STATIC
    /api/info                           the run, the classes with their areas, the bounds
    /api/pixel?lon=..&lat=..            class and confidence of the store pixel there
    /tiles/labels/<z>/<x>/<y>.png       labels coloured; ?classes=0,2 draws only those
    /tiles/scene/<z>/<x>/<y>.png        the scene's imagery

No part of a request path reaches the file system: the static files are read once at start
from the package (``importlib.resources``) into memory and looked up by exact name; tiles
and answers come from the one store and scene the server was started with. On a loopback
address the ``Host`` header must name the loopback too (DNS-rebinding guard).
"""

from __future__ import annotations

import json
import logging
import math
import re
import signal
import socket
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.resources import files
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
from reattn_batch.outputs.info import number_text
from reattn_batch.store import NODATA
from reattn_batch.viewer import tiles
from reattn_batch.workers.errors import UserError

log = logging.getLogger("reattn_batch")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 0  # any free port

#: The files the server may send: name -> content type. Nothing else is ever read.
STATIC: dict[str, str] = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "leaflet.js": "text/javascript; charset=utf-8",
    "leaflet.css": "text/css; charset=utf-8",
}

#: Everything the page loads comes from this server (a CDN request would be refused and
#: reported in the browser's console).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)

_TILE = re.compile(r"/tiles/(labels|scene)/(\d{1,2})/(\d{1,8})/(\d{1,8})\.png")
_LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


def load_static() -> dict[str, bytes]:
    """The allow-listed static files, read from the installed package."""
    folder = files("reattn_batch.viewer").joinpath("static")
    return {name: folder.joinpath(name).read_bytes() for name in STATIC}


class Viewer:
    """What the server shows: one store, its scene, and the page's JSON (thread-safe)."""

    def __init__(self, store_path: str | Path, scene: str | None = None) -> None:
        """store_path: a label store written by `reattn-batch run`.
        scene: the imagery to show under the labels (default: the store's recorded input).
        """
        from reattn_batch.outputs.info import store_info
        from reattn_batch.store import CONFIDENCE, open_store
        from reattn_batch.store.arrays import open_array

        self.ls = open_store(store_path)
        if self.ls.crs_wkt is None:
            raise UserError(
                f"{self.ls.path} has no CRS, so it cannot be placed on a map; "
                "use `reattn-batch export --quicklook` to look at it"
            )
        attrs = self.ls.attrs
        log.info("reading %s (class areas)", self.ls.path)
        self.info = store_info(self.ls.path)  # the same numbers as `reattn-batch info`
        self.labels = tiles.LabelTiler(self.ls)
        self.colormap = self.ls.colormap
        self.n_classes = len(self.ls.class_names)
        try:
            self.confidence = open_array(self.ls.path, CONFIDENCE, mode="r")
        except KeyError:  # the run did not save one (--save-confidence)
            self.confidence = None
        self.scene_uri = scene or attrs.get("scene")
        self.scene_note: str | None = None
        self.imagery: tiles.SceneTiler | None = None
        if self.scene_uri:
            try:
                self.imagery = self._open_scene(str(self.scene_uri), attrs)
            except UserError as exc:
                if scene is not None:  # asked for explicitly: its problem is the user's
                    raise
                self.scene_note = f"imagery unavailable: {exc}"
                log.warning("%s; showing the labels only (pass --scene PATH)", self.scene_note)
        else:
            self.scene_note = "the store records no input scene; pass --scene PATH"
        self.static = load_static()
        self.page_info = self._page_info()
        # The low zooms' overview, built while the browser opens (one pass over the store;
        # tiles that need it wait for it).
        threading.Thread(target=self._warm_overview, name="overview", daemon=True).start()

    def _warm_overview(self) -> None:
        try:
            self.labels.overview()
        except Exception:  # e.g. the process is exiting; a tile that needs it will retry
            log.debug("building the overview in the background failed", exc_info=True)

    @staticmethod
    def _open_scene(uri: str, attrs: dict[str, Any]) -> tiles.SceneTiler:
        from reattn_batch.scene import open_scene

        bands = attrs.get("bands")
        stretch = attrs.get("stretch")
        info = open_scene(
            uri,
            bands=tuple(bands) if bands else None,
            stretch=tuple(stretch) if stretch else None,
            variable=attrs.get("variable"),
        )
        if info.crs_wkt is None:
            raise UserError(f"{uri} has no CRS, so it cannot be placed on the map")
        return tiles.SceneTiler(info)

    def _page_info(self) -> dict[str, Any]:
        info = self.info
        west, south, east, north = self.labels.bounds_lonlat()
        native = self.labels.native_zoom()
        classes = []
        for c in info["classes"]:
            classes.append(
                {
                    **c,
                    "hectares_text": number_text(c["hectares"], 2),
                    "percent_text": number_text(c["percent"], 1),
                }
            )
        weights = info["weights"] or {}
        clip = weights.get("clip") or {}
        return {
            "name": self.ls.path.name,
            "store": info["store"],
            "scene": str(self.scene_uri) if self.scene_uri else None,
            "imagery": self.imagery is not None,
            "scene_note": self.scene_note,
            "bounds": [west, south, east, north],
            "native_zoom": native,
            "min_zoom": self.labels.min_zoom(),
            "max_zoom": min(tiles.MAX_ZOOM, native + 3),
            "complete": info["complete"],
            "progress": info["progress"],
            "method": info["method"],
            "upsampler": info["upsampler"],
            "clip_weights": " ".join(
                str(clip[k]) for k in ("source", "name") if clip.get(k) is not None
            ),
            "random_weights": info["random_weights"],
            "warning": info["warning"],
            "crs": (info["crs"] or {}).get("epsg") or (info["crs"] or {}).get("name"),
            "shape": info["shape"],
            "pixel_size": info["pixel_size"],
            "area_available": info["area_available"],
            "area_note": info["area_note"],
            "valid_hectares": info["valid_hectares"],
            "valid_hectares_text": number_text(info["valid_hectares"], 2),
            "classes": classes,
            "has_confidence": self.confidence is not None,
        }

    # ------------------------------------------------------------------ answers

    def label_png(self, z: int, x: int, y: int, visible: set[int] | None) -> bytes:
        labels = self.labels.label_tile(z, x, y)
        if not (labels != NODATA).any():
            return tiles.empty_png()
        return tiles.encode_png(tiles.colour_table(self.colormap, visible)[labels])

    def scene_png(self, z: int, x: int, y: int) -> bytes | None:
        if self.imagery is None:
            return None
        return self.imagery.tile(z, x, y)

    def pixel(self, lon: float, lat: float) -> dict[str, Any]:
        """Class and confidence of the store pixel at (lon, lat)."""
        where = self.labels.pixel(lon, lat)
        if where is None:
            return {"inside": False}
        row, col = where
        label = int(np.asarray(self.ls.labels[row, col]))
        out: dict[str, Any] = {"inside": True, "row": row, "col": col, "label": label}
        out["class"] = self.ls.class_names[label] if label < self.n_classes else None
        out["nodata"] = label == NODATA
        if self.confidence is not None:
            raw = int(np.asarray(self.confidence[row, col]))
            out["confidence"] = None if raw == NODATA else raw / 254
        return out


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


def make_handler(viewer: Viewer, check_host: bool) -> type[BaseHTTPRequestHandler]:
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
            if not tiles.valid_tile(z, x, y):
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


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def _is_loopback(host: str) -> bool:
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return False
    import ipaddress

    return all(ipaddress.ip_address(i[4][0].split("%")[0]).is_loopback for i in infos)


def make_server(viewer: Viewer, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> _Server:
    """A server listening on (host, port) for ``viewer``; a UserError if it cannot bind."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server_class = type("ViewerServer", (_Server,), {"address_family": family})
    handler = make_handler(viewer, check_host=_is_loopback(host))
    try:
        return server_class((host, port), handler)
    except OSError as exc:
        raise UserError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}); "
            "pass another --port (0 picks a free one) or --host"
        ) from None


def url_of(server: _Server) -> str:
    host, port = server.server_address[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def serve(server: _Server, open_browser: bool = False, echo=print) -> None:
    """Serve until Ctrl-C (or SIGTERM); then close the socket and return, no traceback."""
    url = url_of(server)
    echo(f"Serving the map viewer at {url}  (Ctrl-C to stop)")
    if open_browser:
        import webbrowser

        threading.Thread(target=webbrowser.open, args=(url,), daemon=True).start()
    previous = None
    if threading.current_thread() is threading.main_thread():

        def stop(signum, frame):
            raise KeyboardInterrupt

        previous = signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    echo("viewer stopped")
