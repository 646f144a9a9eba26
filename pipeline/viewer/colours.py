"""Class colours of a label tile: the store's colour map as an RGBA lookup table."""

from __future__ import annotations

import numpy as np

from reattn_batch.store import NODATA


def colour_table(colormap: dict[int, tuple], visible: set[int] | None) -> np.ndarray:
    """(256, 4) uint8 RGBA lookup: class colours opaque where visible, the rest transparent.

    visible: class indices to draw (None: all classes in the colour map).
    """
    lut = np.zeros((256, 4), np.uint8)
    for index, rgba in colormap.items():
        if index == NODATA or (visible is not None and index not in visible):
            continue
        lut[index] = (*rgba[:3], 255)
    return lut
