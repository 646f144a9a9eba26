"""The driver side: the open cluster (``Bench``), worker RSS sampling, one scene against
the model alone on the same crops, and the Dask worker against a plain process."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np
import psutil
from distributed.diagnostics import MemorySampler

from efficiency import worker_tasks
from efficiency.settings import load_average
from efficiency.worker_tasks import PLAIN_SCRIPT, cuda_peak, model_only_calls
from reattn_batch import store
from reattn_batch.run.plan import plan
from reattn_batch.run.request import SceneRequest
from reattn_batch.run.spine import run_scene
from reattn_batch.settings import ClusterSettings
from reattn_batch.workers.errors import UserError
from reattn_batch.workers.model_spec import ModelSpec
from reattn_batch.workers.segmenter import resolve_device

cloudpickle.register_pickle_by_value(worker_tasks)


class RssSampler:
    """Peak RSS of some processes on this host (the driver), sampled in a thread while a
    run goes on. The workers' memory comes from the scheduler (``worker_memory``)."""

    def __init__(self, pids: list[int], interval: float) -> None:
        self.procs = {pid: psutil.Process(pid) for pid in pids}
        self.interval = interval
        self.start_rss = {pid: self._rss(p) for pid, p in self.procs.items()}
        self.peak = dict(self.start_rss)
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    @staticmethod
    def _rss(proc: psutil.Process) -> int:
        try:
            return proc.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return 0

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            for pid, proc in self.procs.items():
                self.peak[pid] = max(self.peak[pid], self._rss(proc))
            self.samples += 1

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        for pid, proc in self.procs.items():
            self.peak[pid] = max(self.peak[pid], self._rss(proc))


WORKER_MEMORY = "workers"


def worker_memory(
    sampler: MemorySampler, client: Any, interval: float
) -> contextlib.AbstractContextManager:
    """Sample the workers' process memory, summed over the cluster, as the scheduler sees
    it (``distributed.diagnostics.MemorySampler``; each worker reports its RSS with its
    heartbeat), into ``sampler.samples[WORKER_MEMORY]``. Remote workers count too."""
    return sampler.sample(WORKER_MEMORY, client=client, measure="process", interval=interval)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds used so far by these processes (all their threads)."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
    return total


def plain_check(
    bench: Bench, calls: int, threads: int, workdir: Path, worker_env: dict[str, str | None]
) -> dict[str, Any]:
    """``calls`` model calls in one worker; in a fresh process without Dask's worker
    environment; in one with only the worker's MALLOC_TRIM_THRESHOLD_; in the worker
    again. Same torch threads, the workers' OMP_WAIT_POLICY; times are inside the loops
    (no Dask overhead, no model loading)."""
    import pickle
    import subprocess

    def in_worker() -> float:
        args = (bench.spec, bench.queries, calls, 0, threads)
        return bench.submit(model_only_calls, *args, worker=bench.slots[0]).result()["seconds"]

    def in_process(extra: dict[str, str]) -> float:
        env = {k: v for k, v in os.environ.items() if k not in dask_env} | extra
        proc = subprocess.run(
            [sys.executable, "-c", PLAIN_SCRIPT, str(blob)],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise UserError(f"the plain-process model check failed: {tail}")
        return json.loads(proc.stdout.strip().splitlines()[-1])["seconds"]

    blob = workdir / "plain_check.pkl"
    blob.write_bytes(pickle.dumps((bench.spec, bench.queries, calls, threads)))
    dask_env = ("MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
    trim = worker_env.get("MALLOC_TRIM_THRESHOLD_")
    before = in_worker()
    plain = in_process({})
    plain_trim = in_process({"MALLOC_TRIM_THRESHOLD_": trim}) if trim else None
    after = in_worker()
    return {
        "calls": calls,
        "threads": threads,
        "worker_s": [before, after],
        "plain_s": plain,
        "plain_malloc_trim_s": plain_trim,
        "malloc_trim_threshold": trim,
        "worker_over_plain": (before + after) / 2 / plain,
        "plain_env_removed": list(dask_env),
    }


class Bench:
    """The open cluster and what every measurement on it shares."""

    def __init__(self, client: Any, info: Any, spec: ModelSpec, pass_connection: bool) -> None:
        self.client, self.info, self.spec = client, info, spec
        self.pass_connection = pass_connection
        workers = client.scheduler_info()["workers"]
        self.workers = workers
        gpu = any("GPU" in w.get("resources", {}) for w in workers.values())
        self.resources = {"GPU": 1} if gpu else None
        # one model task at a time per GPU worker, else one per worker thread
        self.slots = [
            addr
            for addr, w in sorted(workers.items())
            for _ in range(1 if gpu else max(1, int(w.get("nthreads", 1))))
        ]
        self.local_pids: list[int] = []
        self.queries: np.ndarray | None = None

    def submit(self, fn: Callable[..., Any], *args: Any, worker: str) -> Any:
        return self.client.submit(
            fn,
            *args,
            workers=[worker],
            allow_other_workers=False,
            resources=self.resources,
            pure=False,
        )

    def run_scene(self, request: SceneRequest) -> Any:
        if self.pass_connection:
            return run_scene(request, connection=(self.client, self.info))
        address = self.client.scheduler.address
        cluster = ClusterSettings(scheduler=address)
        return run_scene(dataclasses.replace(request, cluster=cluster))

    def model_only(self, calls: int) -> dict[str, Any]:
        """Wall time (submission to last result) of ``calls`` batches over the slots, and
        the CPU seconds the local workers used meanwhile."""
        if calls <= 0:
            return {"wall_s": 0.0, "cpu_s": 0.0, "task_s": [], "calls": 0}
        n = len(self.slots)
        share = [calls // n + (i < calls % n) for i in range(n)]
        threads = self.info.torch_threads
        cpu = cpu_seconds(self.local_pids)
        start = time.perf_counter()
        futures = [
            self.submit(model_only_calls, self.spec, self.queries, k, i, threads, worker=addr)
            for i, (addr, k) in enumerate(zip(self.slots, share, strict=True))
            if k
        ]
        results = self.client.gather(futures)
        return {
            "wall_s": time.perf_counter() - start,
            "cpu_s": cpu_seconds(self.local_pids) - cpu,
            "task_s": [r["seconds"] for r in results],
            "calls": calls,
        }


def measure_scene(
    bench: Bench, request: SceneRequest, mosaic: dict[str, Any], mp: float, interval: float
) -> dict[str, Any]:
    """One scene through run_scene, bracketed by the model alone on the same crops."""
    cfg = bench.spec.cfg
    device = resolve_device(bench.spec.device)
    grid = plan(request).grid
    per_block = [len(grid.crops_touching(b.model)) for b in grid.blocks()]
    first = bench.model_only(math.ceil(sum(per_block) / cfg.batch_size) // 2)
    if device.type == "cuda":
        bench.client.run(cuda_peak, True)
    pids = bench.local_pids
    sampler = RssSampler([os.getpid()], interval)
    workers = MemorySampler()
    cpu0, driver_cpu0 = cpu_seconds(pids), time.process_time()
    with sampler, worker_memory(workers, bench.client, interval):
        start = time.perf_counter()
        summary = bench.run_scene(request)
        scene_s = time.perf_counter() - start
    scene_cpu = cpu_seconds(pids) - cpu0
    memory = workers.samples[WORKER_MEMORY]  # [(timestamp, bytes summed over workers)]
    driver_cpu = time.process_time() - driver_cpu0
    gpu_peak = bench.client.run(cuda_peak) if device.type == "cuda" else {}
    attrs = store.read_attrs(request.out)
    crops_run = int(attrs["crops_run"])
    calls = math.ceil(crops_run / cfg.batch_size)
    calls_padded = sum(math.ceil(n / cfg.batch_size) for n in per_block)
    if crops_run != sum(per_block):  # all-nodata crops were skipped: an upper bound
        calls_padded = max(calls, calls_padded)
    second = bench.model_only(max(calls - first["calls"], 0))
    model_s = first["wall_s"] + second["wall_s"]
    model_cpu = first["cpu_s"] + second["cpu_s"]
    pixels = mosaic["side"] ** 2
    job_s = pixels / 1e6 / summary.megapixels_per_second
    return {
        "size_mp": mp,
        "megapixels": pixels / 1e6,
        "side": mosaic["side"],
        "blocks": summary.blocks,
        "crops_scene": len(grid.crops()),
        "crops_run": crops_run,
        "crops_total": int(attrs["crops_total"]),
        "halo_extra": crops_run / len(grid.crops()) - 1,
        "scene_s": scene_s,
        "job_clock_s": job_s,
        "scene_mp_per_s": pixels / 1e6 / scene_s,
        "job_mp_per_s": summary.megapixels_per_second,
        "model_only_s": model_s,
        "model_only_before_after_s": [first["wall_s"], second["wall_s"]],
        "model_only_task_s": first["task_s"] + second["task_s"],
        "model_calls": calls,
        "job_calls_padded": calls_padded,
        "ratio": model_s / scene_s,
        "ratio_job_clock": model_s / job_s,
        "ratio_padded_calls": model_s * calls_padded / max(calls, 1) / scene_s,
        "worker_cpu_scene_s": scene_cpu,
        "worker_cpu_model_only_s": model_cpu,
        "ratio_cpu": model_cpu / scene_cpu if pids and scene_cpu > 0 else None,
        "driver_cpu_scene_s": driver_cpu,
        "worker_memory_start_mb": memory[0][1] / 1e6,
        "worker_memory_peak_mb": max(v for _, v in memory) / 1e6,
        "worker_memory_samples": len(memory),
        "driver_rss_peak_mb": sampler.peak[os.getpid()] / 1e6,
        "rss_samples": sampler.samples,
        "gpu_peak_mb": [v / 1e6 for v in gpu_peak.values() if v is not None],
        "load_average_1m": round(load_average(), 2),
    }
