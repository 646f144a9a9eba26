"""`export --quicklook`: a colour PNG of the labels with a legend.

A block-wise mode decimation (``outputs.decimate``: nodata ignored unless a cell has no
valid pixel, as GDAL's ``mode`` does) to at most ``max_size`` pixels on the long side,
coloured with the store's palette, with a legend to the right whose shares are the
store's class counts (``outputs.counts``); read in windows, so memory stays bounded.
"""

from __future__ import annotations

import os

import numpy as np

from reattn_batch.outputs.counts import class_counts
from reattn_batch.outputs.decimate import decimate_mode
from reattn_batch.outputs.files import check_export, temp_sibling
from reattn_batch.store import NODATA, LabelStore, label_store
from reattn_batch.workers.errors import InputError

NODATA_QUICKLOOK = (224, 224, 224)  # light grey: nodata / not yet written


def quicklook_shape(height: int, width: int, max_size: int = 1024) -> tuple[int, int]:
    """(rows, cols) of the quicklook's map: the long side scaled to at most ``max_size``."""
    if max_size < 1:
        raise InputError(f"quicklook size {max_size}: must be at least 1 pixel")
    scale = min(1.0, max_size / max(height, width))
    return max(1, min(max_size, round(height * scale))), max(1, min(max_size, round(width * scale)))


def colourise(labels: np.ndarray, colormap: dict[int, tuple]) -> np.ndarray:
    """(h, w) uint8 labels -> (h, w, 3) uint8 RGB; nodata and unknown values light grey."""
    lut = np.tile(np.array(NODATA_QUICKLOOK, np.uint8), (256, 1))
    for index, rgba in colormap.items():
        if index != NODATA:
            lut[index] = rgba[:3]
    return lut[labels]


def _legend_entries(
    ls: LabelStore, counts: np.ndarray
) -> list[tuple[tuple[int, int, int] | None, str]]:
    """(swatch colour, text) rows of the legend: each class with its share of the valid
    pixels (``counts``: full-resolution count of every label value), then nodata if any."""
    valid = int(counts[:NODATA].sum())
    rows: list[tuple[tuple[int, int, int] | None, str]] = []
    for c, name in enumerate(ls.class_names):
        share = f"  {100 * counts[c] / valid:.1f}%" if valid else ""
        rows.append((tuple(ls.colormap[c][:3]), f"{c} {name}{share}"))
    if counts[NODATA]:
        rows.append((NODATA_QUICKLOOK, "nodata / not written"))
    return rows


def export_quicklook(
    store: LabelStore | str | os.PathLike,
    out_png: str | os.PathLike,
    max_size: int = 1024,
    overwrite: bool = False,
) -> tuple[int, int]:
    """Write a colour PNG of the labels with a legend; returns the PNG's (width, height).

    The map is the block-wise mode of the labels at most ``max_size`` pixels on its long
    side (``quicklook_shape``), drawn at the top left in the store's class colours with
    nodata light grey; the legend (a colour swatch and name per class, with its share of
    the valid pixels, counted at full resolution) is to its right on white.
    """
    from PIL import Image, ImageDraw, ImageFont

    ls = label_store(store)
    out = check_export(ls, out_png, overwrite, "quicklook")
    out_h, out_w = quicklook_shape(ls.height, ls.width, max_size)
    labels, counts = decimate_mode(ls, out_h, out_w), class_counts(ls)
    rgb = colourise(labels, ls.colormap)

    # Text scaled with the map (Pillow's built-in font, no font files needed).
    font = ImageFont.load_default(size=max(11, min(20, max(out_h, out_w) // 60)))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    entries = _legend_entries(ls, counts)
    title = "classes"
    lines: list[tuple[tuple[int, int, int] | None, str, tuple[int, int, int]]] = [
        (None, title, (0, 0, 0))
    ]
    lines += [(colour, text, (0, 0, 0)) for colour, text in entries]
    if ls.attrs.get("random_weights"):
        lines.append((None, "RANDOM WEIGHTS: not a real map", (200, 0, 0)))
    if not ls.attrs.get("complete"):
        lines.append((None, "incomplete run", (200, 0, 0)))
    pad, gap = 8, 6
    swatch = getattr(font, "size", 11) + 2
    line_h = max(swatch, *(probe.textbbox((0, 0), t, font=font)[3] for _, t, _ in lines)) + 4
    text_w = max(probe.textbbox((0, 0), t, font=font)[2] for _, t, _ in lines)
    legend_w = pad + swatch + gap + text_w + pad
    legend_h = pad + line_h * len(lines) + pad

    canvas = Image.new("RGB", (out_w + legend_w, max(out_h, legend_h)), (255, 255, 255))
    canvas.paste(Image.fromarray(rgb, "RGB"), (0, 0))
    draw = ImageDraw.Draw(canvas)
    x0, y = out_w + pad, pad
    for colour, text, ink in lines:
        tx = x0
        if colour is not None:
            top = y + (line_h - swatch) // 2
            draw.rectangle(
                (x0, top, x0 + swatch - 1, top + swatch - 1), fill=colour, outline=(0, 0, 0)
            )
            tx = x0 + swatch + gap
        draw.text((tx, y + 2), text, fill=ink, font=font)
        y += line_h

    tmp = temp_sibling(out, ".png")
    try:
        canvas.save(tmp, format="PNG", optimize=True)
        os.replace(tmp, out)
    except OSError as exc:
        raise InputError(f"cannot write the quicklook {out} ({exc.strerror or exc})") from None
    finally:
        tmp.unlink(missing_ok=True)
    return canvas.size
