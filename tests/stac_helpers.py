"""STAC test fixtures: small synthetic GeoTIFFs, STAC Items pointing at them, and real HTTP
servers on loopback (a STAC API with its rasters, and a plain server of chosen routes) that
pystac, pystac-client and GDAL's /vsicurl/ read as they would a remote service."""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np
import pystac
import rasterio
import shapely.geometry
from pyproj import Transformer
from rasterio.transform import from_origin

CRS = "EPSG:25832"
SIZE = 64  # px
GSD = 0.5  # m


def write_tif(path: Path, x0: float, seed: int) -> Path:
    """A 3-band uint8 GeoTIFF of SIZE x SIZE px at GSD m, upper-left corner (x0, 5645000)."""
    data = np.random.default_rng(seed).integers(0, 256, (3, SIZE, SIZE), dtype=np.uint8)
    profile = {
        "driver": "GTiff", "height": SIZE, "width": SIZE, "count": 3, "dtype": "uint8",
        "crs": CRS, "transform": from_origin(x0, 5645000.0, GSD, GSD),
    }  # fmt: skip
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data)
    return path


def make_item(
    item_id: str, tif: Path, assets: dict[str, str] | None = None, **props
) -> pystac.Item:
    """A STAC Item whose footprint is the GeoTIFF's, with ``assets`` {key: role} pointing
    at it (default: a ``visual`` asset)."""
    with rasterio.open(tif) as ds:
        bounds = ds.bounds
    to_wgs84 = Transformer.from_crs(CRS, "EPSG:4326", always_xy=True)
    west, south = to_wgs84.transform(bounds.left, bounds.bottom)
    east, north = to_wgs84.transform(bounds.right, bounds.top)
    geometry = shapely.geometry.mapping(shapely.geometry.box(west, south, east, north))
    item = pystac.Item(
        item_id, geometry, [west, south, east, north], dt.datetime(2024, 6, 1, tzinfo=dt.UTC),
        dict(props),
    )  # fmt: skip
    for key, role in (assets or {"visual": "visual"}).items():
        item.add_asset(
            key,
            pystac.Asset(str(tif.absolute()), media_type=pystac.MediaType.GEOTIFF, roles=[role]),
        )
    return item


def save_item(item: pystac.Item, path: Path) -> Path:
    item.save_object(include_self_link=False, dest_href=str(path))
    return path


class Server:
    """A ThreadingHTTPServer on 127.0.0.1 in a daemon thread: ``routes`` maps a path to a
    function (handler, query) that answers the request; files added with :meth:`file` are
    served with single byte ranges, as GDAL's /vsicurl/ needs. ``requests`` lists the
    paths asked for."""

    def __init__(self, routes: dict[str, Callable] | None = None) -> None:
        self.routes = dict(routes or {})
        self.files: dict[str, Path] = {}
        self.requests: list[str] = []
        self.released = threading.Event()  # set at close: handlers that wait end
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_HEAD(self) -> None:
                self.answer()

            def do_GET(self) -> None:
                self.answer()

            def do_POST(self) -> None:
                self.answer()

            def answer(self) -> None:
                # read the body first (kept as ``body``): a socket closed with unread
                # bytes is reset (RST), and the client may lose the answer it is reading
                self.body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                url = urlparse(self.path)
                server.requests.append(url.path)
                if url.path in server.files:
                    return send_file(self, server.files[url.path])
                route = server.routes.get(url.path) or server.routes.get("*")
                if route is None:
                    return reply(self, {"code": "NotFound"}, 404)
                route(self, {k: v[0] for k, v in parse_qs(url.query).items()})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def file(self, path: Path, route: str | None = None) -> str:
        """Serve ``path`` at ``route`` (default /data/<name>); returns its URL."""
        route = route or f"/data/{path.name}"
        self.files[route] = path
        return self.url + route

    def close(self) -> None:
        self.released.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def reply(handler: BaseHTTPRequestHandler, body: dict, status: int = 200) -> None:
    data = json.dumps(body).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    if handler.command != "HEAD":
        handler.wfile.write(data)


def send_file(handler: BaseHTTPRequestHandler, path: Path) -> None:
    """``path``, or the single byte range the request asks for."""
    size = path.stat().st_size
    match = re.match(r"bytes=(\d+)-(\d*)", handler.headers.get("Range", ""))
    start, end = 0, size - 1
    if match:
        start, end = int(match.group(1)), min(int(match.group(2) or size - 1), size - 1)
        handler.send_response(206)
        handler.send_header("Content-Range", f"bytes {start}-{end}/{size}")
    else:
        handler.send_response(200)
    handler.send_header("Content-Length", str(end - start + 1))
    handler.send_header("Accept-Ranges", "bytes")
    handler.end_headers()
    if handler.command != "HEAD":
        with open(path, "rb") as f:
            f.seek(start)
            handler.wfile.write(f.read(end - start + 1))


CONFORMS = [
    "https://api.stacspec.org/v1.0.0/core",
    "https://api.stacspec.org/v1.0.0/collections",
    "https://api.stacspec.org/v1.0.0/ogcapi-features",
    "https://api.stacspec.org/v1.0.0/item-search",
    "https://api.stacspec.org/v1.0.0/item-search#query",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/geojson",
]
OPS = {"lt": float.__lt__, "lte": float.__le__, "gt": float.__gt__, "gte": float.__ge__,
       "eq": float.__eq__}  # fmt: skip


def landing_page(base: str) -> dict:
    """A STAC API's root (/) at ``base``: conformance, collections and search links."""
    return {
        "type": "Catalog", "id": "loopback", "stac_version": "1.0.0",
        "description": "test API", "conformsTo": CONFORMS,
        "links": [
            {"rel": "self", "href": f"{base}/", "type": "application/json"},
            {"rel": "root", "href": f"{base}/", "type": "application/json"},
            {"rel": "conformance", "href": f"{base}/conformance"},
            {"rel": "data", "href": f"{base}/collections"},
            {"rel": "search", "href": f"{base}/search", "method": "GET",
             "type": "application/geo+json"},
            {"rel": "search", "href": f"{base}/search", "method": "POST",
             "type": "application/geo+json"},
        ],
    }  # fmt: skip


class StacApi(Server):
    """A STAC API on loopback: /, /conformance, /collections/X, /collections/X/items/ID
    and /search (GET or POST: collections, bbox, datetime, query) over ``items``; each
    Item's rasters are served by the same server (/data/NAME), named by relative hrefs,
    which the reader joins on the Item's own URL."""

    def __init__(self, collection: str) -> None:
        super().__init__({"*": self._route})
        self.collection = collection
        self.items: dict[str, dict] = {}  # by endpoint name
        self.gone: set[str] = set()  # endpoints that answer 404
        self.searches: list[dict] = []

    def _route(self, handler: BaseHTTPRequestHandler, query: dict) -> None:
        path = urlparse(handler.path).path
        if path == "/search":
            if handler.command == "POST":
                params = json.loads(handler.body or b"{}")
            else:
                params = dict(query)
                for key in ("bbox", "collections"):
                    if key in params:
                        params[key] = params[key].split(",")
                if "query" in params:
                    params["query"] = json.loads(params["query"])
            return reply(handler, self.search(params))
        body = self.get(path.rstrip("/") or "/")
        reply(handler, body or {"code": "NotFound"}, 200 if body else 404)

    def item_url(self, name: str) -> str:
        return f"{self.url}/collections/{self.collection}/items/{name}"

    def add(self, item: pystac.Item, name: str | None = None, gone: bool = False) -> str:
        """Serve ``item`` at its endpoint here, ``name`` (default its id), which its
        ``self`` link names (``gone``: the search lists it, its endpoint answers 404), and
        its assets' files, which it names as ``../../../data/NAME`` (relative)."""
        name = name or item.id
        href = self.item_url(name)
        item.collection_id = self.collection
        data = item.to_dict(include_self_link=False)
        for asset in data["assets"].values():
            path = Path(asset["href"])
            self.file(path)
            asset["href"] = f"../../../data/{path.name}"
        data["links"] = [
            {"rel": "self", "href": href, "type": "application/geo+json"},
            {"rel": "collection", "href": f"{self.url}/collections/{self.collection}"},
            {"rel": "root", "href": f"{self.url}/"},
        ]
        self.items[name] = data
        if gone:
            self.gone.add(name)
        return href

    def get(self, path: str) -> dict | None:
        if path == "/":
            return landing_page(self.url)
        if path == "/conformance":
            return {"conformsTo": CONFORMS}
        if path == f"/collections/{self.collection}":
            return pystac.Collection(
                self.collection, "test collection",
                pystac.Extent(
                    pystac.SpatialExtent([[-180, -90, 180, 90]]),
                    pystac.TemporalExtent([[None, None]]),
                ),
            ).to_dict(include_self_link=False)  # fmt: skip
        prefix = f"/collections/{self.collection}/items/"
        if path.startswith(prefix) and path[len(prefix) :] not in self.gone:
            return self.items.get(path[len(prefix) :])
        return None

    def search(self, params: dict) -> dict:
        """The Items matching ``params``, filtered here independently of the client."""
        self.searches.append(params)
        out = []
        for data in self.items.values():
            if params.get("collections") and data["collection"] not in params["collections"]:
                continue
            if params.get("bbox"):
                box = shapely.geometry.box(*(float(v) for v in params["bbox"]))
                if not box.intersects(shapely.geometry.shape(data["geometry"])):
                    continue
            if params.get("datetime"):
                lo, _, hi = params["datetime"].partition("/")
                when = data["properties"]["datetime"]
                if (lo not in ("", "..") and when < lo) or (hi not in ("", "..") and when > hi):
                    continue
            query = params.get("query") or {}
            if any(
                not OPS[op](float(data["properties"].get(prop, float("nan"))), float(value))
                for prop, tests in query.items()
                for op, value in tests.items()
            ):
                continue
            out.append(data)
        return {"type": "FeatureCollection", "features": out, "links": []}
