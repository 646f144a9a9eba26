"""Read an iterator ahead in a thread: a regional job's next scenes are planned,
fingerprinted, guarded and their stores created while the driver waits on running
blocks, instead of in between (for small scenes, opening them is the driver's main cost).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

Item = TypeVar("Item")

_END = object()  # the source is exhausted


def read_ahead(
    items: Iterable[Item], depth: int = 2, *, name: str = "read-ahead"
) -> Iterator[Item]:
    """The items of ``items`` in order, produced by a daemon thread up to ``depth`` ahead
    of the consumer. An exception raised by the source is raised here, at its place in
    the sequence. Closing the returned generator stops the thread after the item it is
    producing and waits for that: nothing of the source runs after ``close()`` returns."""
    ready: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(value) -> bool:
        while not stop.is_set():
            try:
                ready.put(value, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((True, item)):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            put((False, exc))
            return
        put((True, _END))

    thread = threading.Thread(target=produce, name=name, daemon=True)
    thread.start()
    try:
        while True:
            ok, value = ready.get()
            if not ok:
                raise value
            if value is _END:
                return
            yield value
    finally:
        stop.set()
        thread.join()
