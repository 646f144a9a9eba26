"""Class colours: deterministic, distinct, the background grey; and the colour map and CF
flag attributes of the ``labels`` array."""

from __future__ import annotations

import colorsys
from typing import Any

from reattn_batch.store.layout import NODATA

_BASE_COLOURS: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (255, 225, 25),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (220, 190, 255),
    (170, 110, 40),
    (255, 250, 200),
    (128, 0, 0),
    (170, 255, 195),
    (128, 128, 0),
    (255, 215, 180),
    (0, 0, 128),
)


_BACKGROUND_COLOUR = (96, 96, 96)


def class_palette(n: int, background_index: int | None = 0) -> list[tuple[int, int, int]]:
    """n deterministic RGB colours (0..255): the background class grey, the rest distinct.

    Classes other than the background take a fixed list of 19 well-separated colours in
    order; beyond that, hues step by the golden angle with alternating lightness.
    """
    colours: list[tuple[int, int, int]] = []
    k = 0
    for c in range(n):
        if c == background_index:
            colours.append(_BACKGROUND_COLOUR)
            continue
        if k < len(_BASE_COLOURS):
            colours.append(_BASE_COLOURS[k])
        else:
            j = k - len(_BASE_COLOURS)
            hue = (j * 0.6180339887498949) % 1.0
            lightness = (0.45, 0.65, 0.3)[j % 3]
            r, g, b = colorsys.hls_to_rgb(hue, lightness, 0.75)
            colours.append((round(r * 255), round(g * 255), round(b * 255)))
        k += 1
    return colours


def flag_meaning(name: str) -> str:
    """A class name as one CF flag_meanings word: whitespace runs -> '_'."""
    return "_".join(name.split())


def label_attrs(class_names: list[str], background_index: int | None) -> dict[str, Any]:
    """CF flag_values/flag_meanings and the RGBA colour map (255: transparent nodata)."""
    n = len(class_names)
    palette = class_palette(n, background_index)
    colormap = {str(c): [*palette[c], 255] for c in range(n)}
    colormap[str(NODATA)] = [0, 0, 0, 0]
    return {
        "long_name": "class label",
        "flag_values": list(range(n)),
        "flag_meanings": " ".join(flag_meaning(c) for c in class_names),
        "colormap": colormap,
    }
