"""The page's static files: a fixed allow-list, read once from the installed package.

No part of a request path reaches the file system: ``load_static`` reads the allow-listed
files (``importlib.resources``) into memory, and the handler looks them up by exact name.
"""

from __future__ import annotations

from importlib.resources import files

#: The files the server may send: name -> content type. Nothing else is ever read.
STATIC: dict[str, str] = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "leaflet.js": "text/javascript; charset=utf-8",
    "leaflet.css": "text/css; charset=utf-8",
}


def load_static() -> dict[str, bytes]:
    """The allow-listed static files, read from the installed package."""
    folder = files("reattn_batch.viewer").joinpath("static")
    return {name: folder.joinpath(name).read_bytes() for name in STATIC}
