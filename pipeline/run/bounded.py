"""Bounded submission (SPEC 3.4): at most ``window`` tasks of a job are on the scheduler
at a time; the next is submitted as one finishes, so 100k tasks do not flood it.

The window may follow the cluster (a callable, re-read as results arrive, so workers that
join or leave an adaptive cluster widen or narrow it), and ``tick`` runs about every
``poll`` seconds while waiting: the no-worker watch and progress lines live there, so a
run whose tasks cannot run anywhere ends instead of waiting forever.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from typing import TypeVar

from distributed import Future, wait

Item = TypeVar("Item")

#: Seconds between ``tick`` calls while no submitted task finishes.
POLL_SECONDS = 1.0


def bounded_as_completed(
    submit: Callable[[Item], Future],
    items: Iterable[Item],
    window: int | Callable[[], int],
    *,
    tick: Callable[[], None] | None = None,
    poll: float = POLL_SECONDS,
) -> Iterator[Future]:
    """Futures of ``submit(item)`` for every item, as they finish, at most ``window``
    (an int, or a callable read again after each result) submitted and unfinished at a
    time; ``tick()`` runs every ``poll`` seconds of waiting (it may raise to stop)."""
    size = window if callable(window) else (lambda: window)
    pending = iter(items)
    running: set[Future] = {submit(item) for item in islice(pending, max(1, size()))}
    while running:
        try:
            finished = wait(running, timeout=poll, return_when="FIRST_COMPLETED").done
        except TimeoutError:
            finished = set()
        if tick is not None:
            tick()
        for future in finished:
            running.discard(future)
            yield future
        room = max(1, size()) - len(running)
        running.update(submit(item) for item in islice(pending, max(0, room)))


def window_for(total_threads: int) -> int:
    """The submission window of a cluster: two tasks per worker thread, at least 4."""
    return max(2 * total_threads, 4)
