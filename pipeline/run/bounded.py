"""Bounded submission (SPEC 3.4): at most ``window`` tasks of a job are on the scheduler
at a time; the next is submitted as one finishes, so 100k tasks do not flood it."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from typing import TypeVar

from distributed import Future, as_completed

Item = TypeVar("Item")


def bounded_as_completed(
    submit: Callable[[Item], Future], items: Iterable[Item], window: int
) -> Iterator[Future]:
    """Futures of ``submit(item)`` for every item, as they finish, at most ``window``
    submitted and unfinished at a time."""
    pending = iter(items)
    running = as_completed([submit(item) for item in islice(pending, window)])
    for future in running:
        yield future
        for item in islice(pending, 1):
            running.add(submit(item))


def window_for(total_threads: int) -> int:
    """The submission window of a cluster: two tasks per worker thread, at least 4."""
    return max(2 * total_threads, 4)
