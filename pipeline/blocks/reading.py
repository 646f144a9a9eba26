"""Reading a block's pixels (SPEC 3.1, 3.2): retried windowed reads, and the block's crop
region on the model grid read in strips on a background thread so that I/O overlaps the
model inside the block's one task."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from reattn_batch.grid.grids import Block, ModelGrid
from reattn_batch.scene import SceneInfo, WindowReadError, read_window
from reattn_batch.workers.environment import EnvironmentSettings
from reattn_batch.workers.segmenter import normalise_chw
from reattn_batch.workers.sliding import Box

log = logging.getLogger(__name__)

READ_ATTEMPTS = 4  # remote reads: a first try and three retries


def read_with_retries(scene: SceneInfo, box: Box) -> tuple[np.ndarray, np.ndarray]:
    """read_window with retries and exponential backoff for transient (remote) failures.

    A local read that fails (corrupt tiles) fails at once. A remote one is tried
    ``READ_ATTEMPTS`` times, $REATTN_BATCH_READ_BACKOFF s apart, doubled each time; each try
    is bounded by GDAL's timeouts (scene/uri.py: a server that sends no data for
    $REATTN_BATCH_READ_TIMEOUT s fails the try), so a server that errors or stalls for good
    fails the block in bounded time with a WindowReadError naming the URL, the window and
    the tries.
    """
    delay = EnvironmentSettings.from_env("read_backoff").read_backoff  # doubled per failure
    started = time.monotonic()
    for attempt in range(1, READ_ATTEMPTS + 1):
        try:
            return read_window(scene, box.y0, box.x0, *box.shape)
        except WindowReadError as exc:
            if not exc.remote:
                raise
            if attempt == READ_ATTEMPTS:
                spent = time.monotonic() - started
                tries = f"{exc.cause}; {READ_ATTEMPTS} tries in {spent:.0f} s"
                raise WindowReadError(exc.path, exc.window, tries) from None
            log.warning("read of %s failed (try %d/%d), retrying in %.0fs: %s",
                        scene.path, attempt, READ_ATTEMPTS, delay, exc.cause)  # fmt: skip
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")


class BlockInput:
    """A block's crop region on the model grid, read in horizontal strips on a background
    thread so that the first crop rows run on the model while later rows are still being
    read: I/O overlaps compute inside the one task of a block.

    pixels: (3, h, w) CLIP-normalised, valid: (h, w) bool; [0, 0] is global model pixel
    ``origin`` = (crop_box.y0, crop_box.x0). Strips of ``STRIP_ROWS`` model rows.
    ``scene`` is read; ``model_grid`` maps its native pixels to the model grid.
    """

    STRIP_ROWS = 256

    def __init__(self, scene: SceneInfo, model_grid: ModelGrid, block: Block) -> None:
        self.scene, self.model_grid, self.block = scene, model_grid, block
        box = block.crop_box
        self.origin = (box.y0, box.x0)
        self.pixels = torch.zeros((3, *box.shape), dtype=torch.float32)
        self.valid = np.zeros(box.shape, dtype=bool)
        edges = [*range(box.y0, box.y1, self.STRIP_ROWS), box.y1]
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="block-read")
        self._strips = [
            (y0, self._pool.submit(self._load, y0, y1))
            for y0, y1 in zip(edges, edges[1:], strict=False)
        ]

    def _load(self, y0: int, y1: int) -> None:
        """Read, resample (from global coordinates) and normalise model rows y0..y1."""
        grid, box = self.model_grid, self.block.crop_box
        cols = (box.x0, box.x1)
        if grid.is_native:
            rgb, valid = read_with_retries(self.scene, Box(y0, box.x0, y1, box.x1))
            image = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1)
        else:
            source = grid.to_model.sources((y0, y1), cols)
            rgb, valid = read_with_retries(self.scene, source)
            image = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1)
            span = {"origin": (source.y0, source.x0), "target_rows": (y0, y1), "target_cols": cols}
            image = grid.to_model.bilinear(image, **span)
            valid = grid.to_model.nearest(valid, **span)
        rows = slice(y0 - box.y0, y1 - box.y0)
        self.pixels[:, rows] = normalise_chw(image)
        self.valid[rows] = valid

    def wait_rows(self, y1: int) -> None:
        """Block until every strip starting above global model row ``y1`` is in."""
        for y0, future in self._strips:
            if y0 < y1:
                future.result()  # re-raises a read failure

    def crop_has_data(self, crop: Box) -> bool:
        """Whether ``crop`` holds any valid pixel (waits for its rows first)."""
        self.wait_rows(crop.y1)
        oy, ox = self.origin
        return bool(self.valid[crop.y0 - oy : crop.y1 - oy, crop.x0 - ox : crop.x1 - ox].any())

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def native_valid(block: Block, block_input: BlockInput) -> np.ndarray:
    """Validity of the block's native output box (nodata and alpha -> False)."""
    if block_input.model_grid.is_native:  # the crop region covers the block
        box, (oy, ox) = block.native, block_input.origin
        return block_input.valid[box.y0 - oy : box.y1 - oy, box.x0 - ox : box.x1 - ox]
    _, valid = read_with_retries(block_input.scene, block.native)  # from GDAL's block cache
    return valid
