"""Reading a single image for `segment` and `eval`, and the protocol's resize (SPEC 4)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from reattn_batch.workers.errors import InputError


def read_rgb(path: str | Path) -> np.ndarray:
    """An image file -> (H, W, 3) uint8 RGB, decoded as mmcv does (OpenCV, colour)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file; pass the path of an image (PNG, JPEG, TIFF)")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise InputError(f"{path}: not a readable image; pass a PNG, JPEG or TIFF file")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def rescaled_size(height: int, width: int, long_side: int) -> tuple[int, int]:
    """mmcv.imrescale's size for scale (long_side, long_side), keep_ratio: (h, w)."""
    scale = min(long_side / max(height, width), long_side / min(height, width))
    return int(height * scale + 0.5), int(width * scale + 0.5)


def resize_long_side(image: np.ndarray, long_side: int) -> np.ndarray:
    """Resize so the long side is ``long_side``, exactly as mmcv's imrescale (INTER_LINEAR)."""
    h, w = rescaled_size(*image.shape[:2], long_side)
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)


def write_label_png(path: str | Path, labels: np.ndarray) -> None:
    """(H, W) uint8 labels -> a single-channel PNG."""
    if not cv2.imwrite(str(path), np.ascontiguousarray(labels, dtype=np.uint8)):
        raise InputError(
            f"-o {path}: could not write the PNG; check the folder exists and is writable"
        )
