"""The web-map tile grid: WebMercatorQuad (morecantile, through rio-tiler), 256 px tiles.

Which tiles are served (``valid_tile``), where a tile's pixel centres lie
(``tile_pixel_centres``), and the read limit both tilers share (``OVERVIEW_MIN_FACTOR``).
"""

from __future__ import annotations

import numpy as np

#: Tile side in pixels.
TILE_SIZE = 256
#: From this many source pixels per tile pixel on, tiles sample an in-memory overview.
OVERVIEW_MIN_FACTOR = 8
#: Highest zoom served (WebMercatorQuad's last level in rio-tiler's definition).
MAX_ZOOM = 24


def web_mercator():
    """The WebMercatorQuad TileMatrixSet (morecantile) used for every tile."""
    from rio_tiler.constants import WEB_MERCATOR_TMS

    return WEB_MERCATOR_TMS


def tile_pixel_centres(z: int, x: int, y: int, size: int = TILE_SIZE):
    """(X, Y) (size, size) float64 EPSG:3857 coordinates of the tile's pixel centres."""
    import morecantile

    b = web_mercator().xy_bounds(morecantile.Tile(x=x, y=y, z=z))
    step_x = (b.right - b.left) / size
    step_y = (b.top - b.bottom) / size
    xs = b.left + step_x * (np.arange(size) + 0.5)
    ys = b.top - step_y * (np.arange(size) + 0.5)
    return np.meshgrid(xs, ys)


def valid_tile(z: int, x: int, y: int) -> bool:
    """Whether (z, x, y) names a WebMercatorQuad tile served here."""
    return 0 <= z <= MAX_ZOOM and 0 <= x < 2**z and 0 <= y < 2**z
