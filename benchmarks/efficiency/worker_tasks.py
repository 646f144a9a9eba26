"""Functions that run inside the Dask workers: warm-up, model-only calls, the timed block.

cloudpickle ships this module by value (``efficiency.measure`` registers it), so a worker
needs no copy of benchmarks/ on its path.
"""

from __future__ import annotations

import functools
import importlib
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.profiler import ProfilerActivity, _ExperimentalConfig, profile, record_function

from efficiency.settings import MODEL_LABEL, PROFILE_TARGETS
from reattn_batch.blocks.task import BlockTask, run_block
from reattn_batch.workers.model_cache import embed_queries, segmenter_for
from reattn_batch.workers.model_spec import ModelSpec

TASK_LABEL = "run_block (profiled)"  # the span that marks the task thread

# These run inside the Dask workers (cloudpickle ships them by value: see the module docstring).
# Keep attribute reads named like torch submodules (x.classes, x.cpu ...) out of them: a
# by-value pickle takes such a name for a submodule to ship and fails on torch.classes.


def sync_device(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def warm_worker(spec: ModelSpec, queries: list[str]) -> dict[str, Any]:
    """Load the model (cached per process), embed the queries, run one batch."""
    start = time.perf_counter()
    q = embed_queries(spec, queries)
    seg = segmenter_for(spec, q)
    crops = torch.zeros(spec.cfg.batch_size, 3, spec.cfg.crop, spec.cfg.crop, device=seg.device)
    seg.crop_logits(crops)
    sync_device(seg.device)
    return {
        "queries": q,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "device": str(seg.device),
        "torch_threads": torch.get_num_threads(),
        "seconds": time.perf_counter() - start,
    }


def set_torch_threads(n: int) -> int:
    torch.set_num_threads(n)
    return torch.get_num_threads()


WORKER_ENV = ("OMP_NUM_THREADS", "MALLOC_TRIM_THRESHOLD_", "OMP_WAIT_POLICY", "MKL_NUM_THREADS")


def read_worker_env() -> dict[str, str | None]:
    return {k: os.environ.get(k) for k in WORKER_ENV}


PLAIN_SCRIPT = """
import json, pickle, sys, time
import torch
from reattn_batch.workers.model_cache import segmenter_for
spec, queries, calls, threads = pickle.loads(open(sys.argv[1], "rb").read())
if threads:
    torch.set_num_threads(threads)
seg = segmenter_for(spec, queries)
cfg = spec.cfg
gen = torch.Generator().manual_seed(0)
crops = torch.randn(cfg.batch_size, 3, cfg.crop, cfg.crop, generator=gen).to(seg.device)
sync = torch.cuda.synchronize if seg.device.type == "cuda" else (lambda: None)
seg.crop_logits(crops)
sync()
start = time.perf_counter()
for _ in range(calls):
    seg.crop_logits(crops)
sync()
print(json.dumps({"seconds": time.perf_counter() - start, "threads": torch.get_num_threads()}))
"""


def model_only_calls(
    spec: ModelSpec, queries: np.ndarray, calls: int, seed: int, torch_threads: int
) -> dict[str, Any]:
    """``calls`` crop_logits calls of one fixed-shape batch on the worker's cached model."""
    if torch_threads and torch.get_num_threads() != torch_threads:
        torch.set_num_threads(torch_threads)  # as run_block does
    seg = segmenter_for(spec, queries)
    cfg = spec.cfg
    gen = torch.Generator().manual_seed(seed)
    crops = torch.randn(cfg.batch_size, 3, cfg.crop, cfg.crop, generator=gen).to(seg.device)
    sync_device(seg.device)
    start = time.perf_counter()
    for _ in range(calls):
        seg.crop_logits(crops)
    sync_device(seg.device)
    return {"seconds": time.perf_counter() - start, "calls": calls}


def cuda_peak(reset: bool = False) -> int | None:
    """Peak bytes allocated by this process on any GPU since the last reset."""
    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    devices = range(torch.cuda.device_count())
    if reset:
        for d in devices:
            torch.cuda.reset_peak_memory_stats(d)
        return None
    return max(int(torch.cuda.max_memory_allocated(d)) for d in devices)


class PhaseTimers:
    """Wall time of wrapped functions per label and thread, from ``torch.profiler``.

    Each wrapped call runs under ``record_function(label)``; the profile (every thread,
    so the block task's reader threads too) gives each call's span. Self time is a span
    less the spans of wrapped calls nested in it on the same thread; the task thread is
    the one that ran the ``TASK_LABEL`` span.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.labels: set[str] = set()
        self.stats: dict[tuple[str, str], list[float]] = {}  # -> [calls, inclusive, exclusive]

    def wrap(self, label: str, fn: Callable[..., Any], sync: bool = False) -> Callable[..., Any]:
        self.labels.add(label)
        device = self.device

        @functools.wraps(fn)
        def traced(*args: Any, **kwargs: Any) -> Any:
            with record_function(label):
                if sync:
                    sync_device(device)
                try:
                    return fn(*args, **kwargs)
                finally:
                    if sync:
                        sync_device(device)

        return traced

    @staticmethod
    def profiler() -> profile:
        """A CPU profiler of every thread (CUDA work is synchronised inside the spans)."""
        return profile(
            activities=[ProfilerActivity.CPU],
            experimental_config=_ExperimentalConfig(profile_all_threads=True),
        )

    def collect(self, prof: profile) -> None:
        """Fill ``stats`` from a finished profile (microsecond spans, in seconds)."""
        events = [e for e in prof.events() if e.name in self.labels or e.name == TASK_LABEL]
        task = next((e.thread for e in events if e.name == TASK_LABEL), None)
        by_thread: dict[int, list[Any]] = {}
        for e in events:
            by_thread.setdefault(e.thread, []).append(e)
        for thread, spans in by_thread.items():
            spans.sort(key=lambda e: (e.time_range.start, -e.time_range.end))
            stack: list[list[Any]] = []  # [event, inner microseconds]
            done: list[list[Any]] = []
            for e in spans:
                while stack and stack[-1][0].time_range.end <= e.time_range.start:
                    done.append(stack.pop())
                if stack and e.name != TASK_LABEL and stack[-1][0].name != TASK_LABEL:
                    stack[-1][1] += e.time_range.elapsed_us()
                stack.append([e, 0.0])
            done.extend(stack)
            name = "task" if thread == task else "background"
            for e, inner in done:
                if e.name == TASK_LABEL:
                    continue
                rec = self.stats.setdefault((e.name, name), [0, 0.0, 0.0])
                span = e.time_range.elapsed_us() / 1e6
                rec[0] += 1
                rec[1] += span
                rec[2] += span - inner / 1e6


def profile_block(job: BlockTask, index: int, queries: np.ndarray) -> dict[str, Any]:
    """run_block(index) once plain, then once with its callees wrapped in timers."""
    seg = segmenter_for(job.model, queries)
    device = seg.device
    start, cpu = time.perf_counter(), time.process_time()
    plain = run_block(job, index, queries)
    plain_wall, plain_cpu = time.perf_counter() - start, time.process_time() - cpu

    timers = PhaseTimers(device)
    patches: list[tuple[Any, str, Any]] = []
    for label, module_name, attr in PROFILE_TARGETS:
        owner: Any = importlib.import_module(module_name)
        *path, name = attr.split(".")
        for part in path:
            owner = getattr(owner, part, None)
        original = getattr(owner, name, None) if owner is not None else None
        if original is None:
            continue
        patches.append((owner, name, original))
        setattr(owner, name, timers.wrap(label, original))
    seg.crop_logits = timers.wrap(MODEL_LABEL, seg.crop_logits, sync=True)
    try:
        with timers.profiler() as prof, record_function(TASK_LABEL):
            start, cpu = time.perf_counter(), time.process_time()
            result = run_block(job, index, queries)
            wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        timers.collect(prof)
    finally:
        del seg.crop_logits  # back to the class's method
        for owner, name, original in reversed(patches):
            setattr(owner, name, original)
    block = job.grid.block_at(index)
    return {
        "index": index,
        "native_shape": list(block.native.shape),
        "read_shape": list(block.read.shape),
        "crops": result.crops,
        "batch_size": job.model.cfg.batch_size,
        "plain_wall_s": plain_wall,
        "plain_cpu_s": plain_cpu,
        "plain_task_s": plain.seconds,
        "wall_s": wall,
        "cpu_s": cpu,
        "timers": [
            {"label": k[0], "thread": k[1], "calls": int(v[0]), "inclusive_s": v[1], "self_s": v[2]}
            for k, v in timers.stats.items()
        ],
    }
