"""Functions that run inside the Dask workers: warm-up, model-only calls, the timed block.

cloudpickle ships this module by value (``efficiency.measure`` registers it), so a worker
needs no copy of benchmarks/ on its path.
"""

from __future__ import annotations

import functools
import importlib
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from reattn_batch.blocks.task import BlockTask, run_block
from reattn_batch.workers.model_cache import embed_queries, segmenter_for
from reattn_batch.workers.model_spec import ModelSpec

from efficiency.settings import MODEL_LABEL, PROFILE_TARGETS

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
    """Wall time of wrapped functions, exclusive of wrapped callees, per label and thread."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.task_thread = threading.get_ident()
        self.local = threading.local()
        self.stats: dict[tuple[str, str], list[float]] = {}  # -> [calls, inclusive, exclusive]
        self.lock = threading.Lock()

    def wrap(self, label: str, fn: Callable[..., Any], sync: bool = False) -> Callable[..., Any]:
        timers = self

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            stack = timers.local.__dict__.setdefault("stack", [])
            if sync:
                sync_device(timers.device)
            start = time.perf_counter()
            stack.append(0.0)  # time spent in wrapped callees
            try:
                return fn(*args, **kwargs)
            finally:
                if sync:
                    sync_device(timers.device)
                elapsed = time.perf_counter() - start
                inner = stack.pop()
                if stack:
                    stack[-1] += elapsed
                ident = threading.get_ident()
                thread = "task" if ident == timers.task_thread else "background"
                with timers.lock:
                    rec = timers.stats.setdefault((label, thread), [0, 0.0, 0.0])
                    rec[0] += 1
                    rec[1] += elapsed
                    rec[2] += elapsed - inner

        return timed


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
        start, cpu = time.perf_counter(), time.process_time()
        result = run_block(job, index, queries)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
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
