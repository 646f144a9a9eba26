"""Reading a window of a scene in native pixel coordinates."""

from __future__ import annotations

import numpy as np

from reattn_batch.scene import gdal_backend, zarr_backend
from reattn_batch.scene.handles import forget, handle_key
from reattn_batch.scene.info import SceneInfo, WindowReadError
from reattn_batch.scene.policy import to_rgb
from reattn_batch.workers.errors import UserError

#: Failures during a read that are not about the file: they keep their own type and message
#: and are never retried (a read is retried, or reported as corrupt, only for I/O and
#: format errors: rasterio/GDAL, OS and decoder errors).
NOT_READ_ERRORS: tuple[type[BaseException], ...] = (
    MemoryError,
    TypeError,
    AttributeError,
    NameError,
    LookupError,
    AssertionError,
    NotImplementedError,
    RecursionError,
)


def read_window(
    scene: SceneInfo, row0: int, col0: int, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """(rgb (height, width, 3) uint8, valid (height, width) bool) of a native-pixel window.

    The window may hang over the scene's edges: only the intersecting part is read (a
    plain windowed read) and the rest is zeros / invalid. A failed read raises
    :class:`WindowReadError`.
    """
    row0, col0, height, width = int(row0), int(col0), int(height), int(width)
    if height < 0 or width < 0:
        raise ValueError(f"negative window size {height}x{width}")
    rgb = np.zeros((height, width, 3), dtype=np.uint8)
    valid = np.zeros((height, width), dtype=bool)
    r0, r1 = max(row0, 0), min(row0 + height, scene.height)
    c0, c1 = max(col0, 0), min(col0 + width, scene.width)
    if r1 <= r0 or c1 <= c0:
        return rgb, valid
    failure: Exception | None = None
    try:
        reader = zarr_backend.read if scene.is_zarr else gdal_backend.read
        values, ok = reader(scene, r0, r1, c0, c1)
    except (UserError, *NOT_READ_ERRORS):
        raise  # our own message, or out of memory / a code bug: not a corrupt file, no retry
    except Exception as exc:
        failure = exc
    if failure is not None:
        # Raised outside the except block and holding only text: GDAL's exceptions in
        # __cause__/__context__ do not unpickle, and Dask ships this error between processes.
        forget(handle_key(scene))  # a retry re-opens (new connection, fresh state)
        window = ((row0, row0 + height), (col0, col0 + width))
        raise WindowReadError(scene.path, window, failure)
    inner = (slice(r0 - row0, r1 - row0), slice(c0 - col0, c1 - col0))
    rgb[inner] = to_rgb(scene, values, ok)
    valid[inner] = ok
    return rgb, valid
