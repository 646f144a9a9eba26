"""`reattn-batch view`: a local, offline web map of a label store over its scene.

server.py        the server's lifecycle: bind, serve until Ctrl-C/SIGTERM, close
handler.py       the HTTP routes, the Host (DNS-rebinding) check, the response headers
store_view.py    what is shown: the store, its scene, the page's JSON, pixel queries
static_files.py  the static allow-list, read once from the package
label_tiles.py   label tiles (nearest / mode overview)
scene_tiles.py   imagery tiles (rio-tiler)
colours.py       class colour lookup tables
png.py           PNG encoding
tile_grid.py     the WebMercatorQuad tile grid and its shared constants
static/          the page, its script and style, and the vendored Leaflet (THIRD_PARTY.md)

The click command is ``pipeline/cli/view.py``.
"""
