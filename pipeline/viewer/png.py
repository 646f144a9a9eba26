"""PNG bytes of RGBA tiles (Pillow), and the one transparent tile."""

from __future__ import annotations

import io

import numpy as np

from reattn_batch.viewer.tile_grid import TILE_SIZE


def encode_png(rgba: np.ndarray) -> bytes:
    """(h, w, 4) uint8 RGBA -> PNG bytes (fast compression: tiles are served locally)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgba), "RGBA").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


EMPTY_PNG = b""  # filled on first use by ``empty_png``


def empty_png() -> bytes:
    """A fully transparent 256 x 256 PNG (tiles with nothing to show)."""
    global EMPTY_PNG
    if not EMPTY_PNG:
        EMPTY_PNG = encode_png(np.zeros((TILE_SIZE, TILE_SIZE, 4), np.uint8))
    return EMPTY_PNG
