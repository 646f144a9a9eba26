"""`reattn-batch view`: a local, offline web map of a label store over its scene.

server.py   the HTTP server, its routes and the static allow-list
tiles.py    label tiles (nearest / mode overview) and imagery tiles (rio-tiler)
static/     the page, its script and style, and the vendored Leaflet (THIRD_PARTY.md)

The click command is ``pipeline/cli/view.py``.
"""
