"""Open datasets kept per thread and process, so a worker's block tasks reuse handles.

rasterio handles are not thread-safe, and a forked child must not share file offsets
with its parent: the cache is thread-local and dropped after a fork.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import OrderedDict
from typing import Any

from reattn_batch.scene.info import SceneInfo

#: Open datasets kept per thread and process.
_CACHE_SIZE = 8


class _Handles(threading.local):
    """Open datasets of this thread, dropped after a fork (rasterio handles are not
    thread-safe, and a forked child must not share file offsets with its parent)."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.items: OrderedDict[tuple, Any] = OrderedDict()


_HANDLES = _Handles()


def cached(key: tuple, opener) -> Any:
    if _HANDLES.pid != os.getpid():
        _HANDLES.items = OrderedDict()
        _HANDLES.pid = os.getpid()
    items = _HANDLES.items
    if key in items:
        items.move_to_end(key)
        return items[key]
    handle = opener()
    items[key] = handle
    while len(items) > _CACHE_SIZE:
        _, old = items.popitem(last=False)
        _close(old)
    return handle


def forget(key: tuple) -> None:
    handle = _HANDLES.items.pop(key, None)
    if handle is not None:
        _close(handle)


def _close(handle: Any) -> None:
    with contextlib.suppress(Exception):
        (handle[0] if isinstance(handle, tuple) else handle).close()


def close_cached_datasets() -> None:
    """Close this thread's cached datasets (tests; long-lived processes)."""
    while _HANDLES.items:
        _close(_HANDLES.items.popitem()[1])


def handle_key(scene: SceneInfo) -> tuple:
    return (scene.path, scene.identity, scene.variable, scene.driver)
