"""Wall time of repeated model calls, measured by ``torch.utils.benchmark.Timer``.

The Timer synchronises CUDA around its measurement and runs its own warm-up calls; it is
given this process's torch thread count (its default is one thread).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.benchmark import Timer


def seconds_per_call(fn: Callable[[], object], calls: int) -> float:
    """Mean seconds of one ``fn()`` over ``calls`` back-to-back calls (after the Timer's
    warm-up of max(calls // 100, 2) calls), CUDA work included."""
    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.timeit(calls).mean
