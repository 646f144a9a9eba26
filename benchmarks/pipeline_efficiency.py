"""Efficiency of the scene job (`reattn_batch.run.spine.run_scene`) against the model alone.

Five figures, each printed with its settings (and written with ``--json OUT``):

1. Scene vs model-only time (target ratio >= 0.9). The script opens ONE cluster the
   way the job does (``reattn_batch.run.cluster.connect``: the embedded LocalCluster's layout,
   ``--workers/--threads-per-worker``, or ``--scheduler ADDR``), warms it up (every
   worker loads the model and runs one batch, and a small scene goes through the whole
   job), and hands that connection to ``run_scene`` for every scene. So the scene time,
   from the call of ``run_scene`` to its return, holds planning, store creation, the
   text-embedding task, every block task (read, resample, model, post-process, write)
   and the final metadata, but neither cluster start-up nor model loading, which a long
   job pays once. The job's own clock (its reported MP/s, first window submitted to last
   block) is printed beside it. Then the model alone: ``CropSegmenter.crop_logits`` (the
   worker's cached segmenter: same process, device, dtype and torch threads) on as many
   crops as the job ran (the store's ``crops_run``, halo duplicates included) in fixed
   batches of the job's batch size, spread over the same worker slots (one task per
   worker thread; one per GPU worker); half of those calls run just before the scene and
   half just after, so a load that drifts weighs on both sides. The model-only crops are
   seeded random normals: crop content does not change the speed (random, real and
   all-zero crops timed alike, within noise, on the CPU).
   ratio = model-only time / scene time. Also printed: the ratio had the model-only path
   run the job's padded calls (each block pads its own last batch), and the ratio of the
   workers' CPU seconds (steadier than wall time when other processes share the cores).
2. Worker peak RSS per scene size (target: flat). A thread in this process samples the
   RSS of every worker process (psutil, on the PIDs the workers report) during each run;
   scenes run smallest first on the same warm workers, so a peak that grows with the
   scene cannot hide behind an earlier run's high-water mark. On CUDA the workers' peak
   allocated GPU memory is printed too.
3. Halo redundancy: ``BlockGrid.halo_redundancy()`` (extra crop runs) at blocks
   1024/2048/4096 for 64 and 400 MP scene geometries; arithmetic only.
4. Where a block task's time goes: the real ``run_block`` on one interior block of the
   largest mosaic, run on a worker with the functions it calls (read, resample,
   normalise, model, accumulation, labels, store writes) wrapped in timers; exclusive
   wall time per function and thread, and what is left on the task thread.
5. The Dask worker against a plain process: the same model calls in a worker and in a
   fresh Python process without Dask's worker environment (Dask sets
   MALLOC_TRIM_THRESHOLD_=65536 and OMP_NUM_THREADS=1 before a worker starts), same
   torch threads, timed worker / plain / worker.

OpenMP: on the CPU the workers get OMP_WAIT_POLICY=PASSIVE unless the environment sets
it (``--omp-wait-policy default`` leaves libgomp's spinning on). On cores shared with
other processes, spinning makes a two-thread model call several times dearer, and (as
libgomp documents for GOMP_SPINCOUNT) it throttles spinning only once it manages more
threads than there are CPUs, which the block task's reader thread happens to bring
about and the model-only path does not: with spinning on, the ratio measures that
accident, not the pipeline.

Scenes are GeoTIFF mosaics (512 px tiles, deflate) of N megapixels tiled from
``oem_koeln_50.tif`` with every other tile mirrored (rows and columns), so the content
is not a plain repeat. CLIP weights are random (seeded) and jbu_one without
``--upsampler-weights`` is a seeded random init: speed figures only, not accuracy.
The machine this runs on may be shared and noisy: each figure is from one run, and
the ratios (taken close together in time) are what to read.

    python benchmarks/pipeline_efficiency.py                  # CPU: tiny model, 1 and 4 MP
    python benchmarks/pipeline_efficiency.py --json out.json  # CUDA: ViT-B/16, 4 and 64 MP
    python benchmarks/pipeline_efficiency.py --sizes 1 --method segearth-ov --no-profile
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import importlib
import inspect
import json
import math
import os
import platform
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import rasterio
import torch
from rasterio.windows import Window
from reattn_batch import store
from reattn_batch.blocks.task import BlockTask, run_block
from reattn_batch.grid.grids import BlockGrid, ModelGrid
from reattn_batch.run.cluster import connect
from reattn_batch.run.plan import plan
from reattn_batch.run.request import SceneRequest
from reattn_batch.run.spine import run_scene
from reattn_batch.settings import ClusterSettings, SceneSettings
from reattn_batch.workers.batching import CPU_BATCH
from reattn_batch.workers.classes import parse_classes
from reattn_batch.workers.config import METHODS, load_config
from reattn_batch.workers.errors import UserError
from reattn_batch.workers.model_cache import embed_queries, segmenter_for
from reattn_batch.workers.model_spec import ModelSpec
from reattn_batch.workers.segmenter import autocast_dtype, resolve_device
from reattn_batch.workers.upsampler import JBUOne, JBUStack

SOURCE = Path(__file__).resolve().parents[2] / "shared/data/rasters/oem_koeln_50.tif"
DEFAULT_CLASSES = "building,road,water,tree"
HALO_BLOCKS = (1024, 2048, 4096)
HALO_SIZES = (64.0, 400.0)
MOSAIC_TILE = 512
WARMUP_SIDE = 512  # px: the warm-up scene (one block), or the smallest mosaic if smaller
PLAIN_CALLS = {"cpu": 4, "cuda": 50}  # model calls per side of the worker vs plain check

# Defaults that depend on the device. On the CPU the 4 MP mosaic is 4 blocks of 1024
# (a scene of one block says nothing about memory against scene size) and the model is
# the tiny test architecture, so that the default run takes minutes on 2 cores.
DEFAULTS = {
    "cpu": {
        "sizes": "1,4",
        "block_size": 1024,
        "clip_model": "ViT-T-16-test",
        "upsampler": "bilinear",
    },
    "cuda": {
        "sizes": "4,64",
        "block_size": "auto",
        "clip_model": "ViT-B-16-quickgelu",
        "upsampler": "jbu_one",
    },
}

# What the block profile times inside run_block: (label, module, attribute). A missing
# attribute is skipped, so the profile follows the block task as it changes.
PROFILE_TARGETS = (
    ("model cache lookup", "reattn_batch.blocks.task", "segmenter_for"),
    ("started record (zarr)", "reattn_batch.blocks.task", "store.mark_block_started"),
    ("read window (GDAL)", "reattn_batch.blocks.reading", "read_window"),
    ("resample image to model grid", "reattn_batch.grid.resample", "Resampler.bilinear"),
    ("resample mask (nearest)", "reattn_batch.grid.resample", "Resampler.nearest"),
    ("normalise", "reattn_batch.blocks.reading", "normalise_chw"),
    ("wait for pixel rows", "reattn_batch.blocks.reading", "BlockInput.wait_rows"),
    ("stack crops, pad, sum logits", "reattn_batch.blocks.task", "accumulate_logits"),
    ("labels (softmax, argmax)", "reattn_batch.blocks.task", "labels_from_logits"),
    ("write labels (zarr)", "reattn_batch.blocks.task", "store.write_block"),
    ("done record (zarr)", "reattn_batch.blocks.task", "store.mark_block_done"),
)
MODEL_LABEL = "model (crop_logits)"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    cpu, cuda = DEFAULTS["cpu"], DEFAULTS["cuda"]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument(
        "--sizes",
        default=None,
        help=f"mosaic sizes in megapixels, comma-separated (default {cpu['sizes']} on CPU, "
        f"{cuda['sizes']} on CUDA)",
    )
    p.add_argument(
        "--block-size",
        type=int,
        default=None,
        help=f"the job's block size in native px (default {cpu['block_size']} on CPU, "
        f"{cuda['block_size']} = the job's default on CUDA)",
    )
    p.add_argument(
        "--clip-model",
        default=None,
        help=f"open_clip architecture (default {cpu['clip_model']} on CPU, "
        f"{cuda['clip_model']} on CUDA)",
    )
    p.add_argument(
        "--method", choices=METHODS, default=None, help="(default: configs/method.yaml's)"
    )
    p.add_argument(
        "--upsampler",
        choices=("bilinear", "jbu_one", "jbu_stack"),
        default=None,
        help=f"(default {cpu['upsampler']} on CPU, {cuda['upsampler']} on CUDA; jbu_* need "
        "a 512-d CLIP such as ViT-B/16)",
    )
    p.add_argument(
        "--upsampler-weights",
        default=None,
        metavar="CKPT",
        help="a SimFeatUp/FeatUp .ckpt; without it jbu_one/jbu_stack get a seeded random "
        "init, saved as a checkpoint in the work directory",
    )
    p.add_argument("--batch-size", type=int, default=None, help="(default: the config's)")
    p.add_argument(
        "--dtype",
        choices=("auto", "fp32", "fp16", "bf16"),
        default="auto",
        help="autocast dtype on CUDA (auto = fp16); the CPU runs fp32",
    )
    p.add_argument(
        "--gsd",
        type=float,
        default=None,
        help="model resolution in metres (the mosaics are 0.5 m; default: native, no resampling)",
    )
    p.add_argument("--classes", default=DEFAULT_CLASSES, help=f"(default {DEFAULT_CLASSES})")
    p.add_argument("--workers", type=int, default=None, help="LocalCluster workers")
    p.add_argument("--threads-per-worker", type=int, default=None)
    p.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDR",
        help="use this running Dask scheduler instead of a LocalCluster (worker memory is "
        "sampled only for workers on this host)",
    )
    p.add_argument("--source", default=str(SOURCE), help="raster the mosaics are tiled from")
    p.add_argument(
        "--workdir", default=None, help="keep mosaics and stores here (default: a temp dir)"
    )
    p.add_argument("--sample-interval", type=float, default=0.05, help="RSS sampling, seconds")
    p.add_argument("--no-profile", action="store_true", help="skip the block-task profile")
    p.add_argument(
        "--no-plain-check", action="store_true", help="skip the worker vs plain process check"
    )
    p.add_argument(
        "--omp-wait-policy",
        choices=("passive", "default"),
        default=None,
        help="passive: start the LocalCluster's workers with OMP_WAIT_POLICY=PASSIVE (default "
        "on CPU, unless the environment sets it); default: leave it to libgomp",
    )
    p.add_argument("--json", default=None, metavar="OUT", help="write every figure to OUT")
    p.add_argument("-v", "--verbose", action="store_true", help="show the job's log lines")
    return p.parse_args(argv)


def _sizes(text: str) -> list[float]:
    try:
        values = sorted({float(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise UserError(f"--sizes {text!r}: expected comma-separated megapixels") from None
    if not values or any(v <= 0 for v in values):
        raise UserError(f"--sizes {text!r}: expected positive megapixels")
    return values


def _mp(value: float) -> str:
    return f"{value:g} MP"


def _load() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


# ----------------------------------------------------------------------------- machine


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_info(device: torch.device) -> dict[str, Any]:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "host": socket.gethostname(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "cpu_usable": usable,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average_1m": round(_load(), 2),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "gpu_count": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "dask": version("distributed"),
        "rasterio": rasterio.__version__,
        "gdal": rasterio.__gdal_version__,
        "reattn_batch": version("reattn-batch"),
    }


# ----------------------------------------------------------------------------- inputs


def mosaic_side(megapixels: float) -> int:
    return max(1, round(math.sqrt(megapixels * 1e6)))


def _mirrored_index(n: int, period: int) -> np.ndarray:
    """0..n-1 mapped into a source axis of ``period`` px, every other tile reversed."""
    tile, offset = np.divmod(np.arange(n), period)
    return np.where(tile % 2 == 1, period - 1 - offset, offset)


def build_mosaic(source: Path, out: Path, side: int) -> dict[str, Any]:
    """A side x side GeoTIFF (tiled 512, deflate) tiled from ``source`` with mirrored
    flips; the source's CRS, pixel size and origin. Written in strips of 512 rows."""
    start = time.perf_counter()
    with rasterio.open(source) as src:
        base = src.read()
        profile = {
            "driver": "GTiff",
            "width": side,
            "height": side,
            "count": src.count,
            "dtype": src.dtypes[0],
            "crs": src.crs,
            "transform": src.transform,
            "nodata": src.nodata,
            "tiled": True,
            "blockxsize": MOSAIC_TILE,
            "blockysize": MOSAIC_TILE,
            "compress": "deflate",
            "interleave": "pixel",
            "BIGTIFF": "IF_SAFER",
            "NUM_THREADS": "ALL_CPUS",  # deflate on every core
        }
        colorinterp = src.colorinterp
    _, h, w = base.shape
    rows, cols = _mirrored_index(side, h), _mirrored_index(side, w)
    with rasterio.open(out, "w", **profile) as dst:
        dst.colorinterp = colorinterp
        for r0 in range(0, side, MOSAIC_TILE):
            r1 = min(r0 + MOSAIC_TILE, side)
            strip = base[:, rows[r0:r1]][:, :, cols]
            dst.write(strip, window=Window(0, r0, side, r1 - r0))
    return {
        "path": str(out),
        "side": side,
        "megapixels": side * side / 1e6,
        "file_mb": out.stat().st_size / 1e6,
        "build_s": time.perf_counter() - start,
    }


def random_upsampler_checkpoint(kind: str, out: Path, seed: int = 0) -> Path:
    """A Lightning-style checkpoint of a seeded random jbu_one/jbu_stack (512-d)."""
    torch.manual_seed(seed)
    module = (JBUOne if kind == "jbu_one" else JBUStack)(512)
    state = {f"upsampler.{k}": v.detach().clone() for k, v in module.state_dict().items()}
    torch.save({"state_dict": state}, out)
    return out


# ----------------------------------------------------------------------------- halo


def halo_table(
    sizes: tuple[float, ...], blocks: tuple[int, ...], f: float, crop: int, stride: int, batch: int
) -> list[dict[str, Any]]:
    """Crops and forward calls per block size, for square scenes on a model grid scaled by f."""
    rows = []
    for mp in sizes:
        side = mosaic_side(mp)
        model_grid = ModelGrid.for_gsd((side, side), 1.0, 1.0 / f)
        for block in blocks:
            grid = BlockGrid(model_grid=model_grid, block=block, crop=crop, stride=stride)
            per_block = [len(grid.crops_touching(b.model)) for b in grid.blocks()]
            rows.append(
                {
                    "megapixels": mp,
                    "side": side,
                    "model_grid": list(model_grid.shape),
                    "block": block,
                    "blocks": len(grid),
                    "scene_crops": len(grid.crops()),
                    "crops_run": sum(per_block),
                    "halo_redundancy": grid.halo_redundancy(),
                    "calls_ideal": math.ceil(sum(per_block) / batch),
                    "calls_padded": sum(math.ceil(n / batch) for n in per_block),
                }
            )
    return rows


# ----------------------------------------------------------------------------- worker side
# These run inside the Dask workers (cloudpickle ships them by value from this script).
# Keep attribute reads named like torch submodules (x.classes, x.cpu ...) out of them: a
# by-value pickle takes such a name for a submodule to ship and fails on torch.classes.


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _warm_worker(spec: ModelSpec, queries: list[str]) -> dict[str, Any]:
    """Load the model (cached per process), embed the queries, run one batch."""
    start = time.perf_counter()
    q = embed_queries(spec, queries)
    seg = segmenter_for(spec, q)
    crops = torch.zeros(spec.cfg.batch_size, 3, spec.cfg.crop, spec.cfg.crop, device=seg.device)
    seg.crop_logits(crops)
    _sync(seg.device)
    return {
        "queries": q,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "device": str(seg.device),
        "torch_threads": torch.get_num_threads(),
        "seconds": time.perf_counter() - start,
    }


def _set_torch_threads(n: int) -> int:
    torch.set_num_threads(n)
    return torch.get_num_threads()


WORKER_ENV = ("OMP_NUM_THREADS", "MALLOC_TRIM_THRESHOLD_", "OMP_WAIT_POLICY", "MKL_NUM_THREADS")


def _worker_env() -> dict[str, str | None]:
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


def _model_only(
    spec: ModelSpec, queries: np.ndarray, calls: int, seed: int, torch_threads: int
) -> dict[str, Any]:
    """``calls`` crop_logits calls of one fixed-shape batch on the worker's cached model."""
    if torch_threads and torch.get_num_threads() != torch_threads:
        torch.set_num_threads(torch_threads)  # as run_block does
    seg = segmenter_for(spec, queries)
    cfg = spec.cfg
    gen = torch.Generator().manual_seed(seed)
    crops = torch.randn(cfg.batch_size, 3, cfg.crop, cfg.crop, generator=gen).to(seg.device)
    _sync(seg.device)
    start = time.perf_counter()
    for _ in range(calls):
        seg.crop_logits(crops)
    _sync(seg.device)
    return {"seconds": time.perf_counter() - start, "calls": calls}


def _cuda_peak(reset: bool = False) -> int | None:
    """Peak bytes allocated by this process on any GPU since the last reset."""
    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    devices = range(torch.cuda.device_count())
    if reset:
        for d in devices:
            torch.cuda.reset_peak_memory_stats(d)
        return None
    return max(int(torch.cuda.max_memory_allocated(d)) for d in devices)


class _Timers:
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
                _sync(timers.device)
            start = time.perf_counter()
            stack.append(0.0)  # time spent in wrapped callees
            try:
                return fn(*args, **kwargs)
            finally:
                if sync:
                    _sync(timers.device)
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


def _profile_block(job: BlockTask, index: int, queries: np.ndarray) -> dict[str, Any]:
    """run_block(index) once plain, then once with its callees wrapped in timers."""
    seg = segmenter_for(job.model, queries)
    device = seg.device
    start, cpu = time.perf_counter(), time.process_time()
    plain = run_block(job, index, queries)
    plain_wall, plain_cpu = time.perf_counter() - start, time.process_time() - cpu

    timers = _Timers(device)
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


# ----------------------------------------------------------------------------- driver side


class RssSampler:
    """Peak RSS of some processes, sampled in a thread while a run goes on."""

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
        return bench.submit(_model_only, *args, worker=bench.slots[0]).result()["seconds"]

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
            self.submit(_model_only, self.spec, self.queries, k, i, threads, worker=addr)
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
        bench.client.run(_cuda_peak, True)
    pids = bench.local_pids
    sampler = RssSampler([*pids, os.getpid()], interval)
    cpu0, driver_cpu0 = cpu_seconds(pids), time.process_time()
    with sampler:
        start = time.perf_counter()
        summary = bench.run_scene(request)
        scene_s = time.perf_counter() - start
    scene_cpu = cpu_seconds(pids) - cpu0
    driver_cpu = time.process_time() - driver_cpu0
    gpu_peak = bench.client.run(_cuda_peak) if device.type == "cuda" else {}
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
        "worker_rss_start_mb": [sampler.start_rss[p] / 1e6 for p in pids],
        "worker_rss_peak_mb": [sampler.peak[p] / 1e6 for p in pids],
        "driver_rss_peak_mb": sampler.peak[os.getpid()] / 1e6,
        "rss_samples": sampler.samples,
        "gpu_peak_mb": [v / 1e6 for v in gpu_peak.values() if v is not None],
        "load_average_1m": round(_load(), 2),
    }


# ----------------------------------------------------------------------------- report


def print_halo(halo: list[dict[str, Any]], batch: int) -> None:
    print(
        "Halo redundancy (BlockGrid.halo_redundancy; target <= 10% extra crops at the "
        "default block, --block-size auto: see benchmarks/halo.py)"
    )
    print(
        f"  {'scene':>7} {'model grid':>12} {'block':>6} {'blocks':>7} {'crops':>8} "
        f"{'run':>8} {'extra':>7} {'+padded calls':>14}"
    )
    for row in halo:
        pad = row["calls_padded"] / row["calls_ideal"] - 1
        mg = "x".join(str(v) for v in row["model_grid"])
        print(
            f"  {_mp(row['megapixels']):>7} {mg:>12} {row['block']:>6} {row['blocks']:>7} "
            f"{row['scene_crops']:>8} {row['crops_run']:>8} "
            f"{100 * row['halo_redundancy']:>6.1f}% {100 * pad:>13.1f}%"
        )
    print(
        "  (run: crop runs summed over blocks; +padded calls: extra forward calls from each "
        f"block padding its own last batch of {batch})"
    )


def print_scenes(scenes: list[dict[str, Any]]) -> None:
    print(
        "Scene vs model-only (target ratio >= 0.9; scene = the run_scene call on the warm "
        "cluster, model = crop_logits on crops_run crops)"
    )
    print(
        f"  {'scene':>7} {'blocks':>6} {'crops':>6} {'halo':>6} {'scene s':>8} {'MP/s':>7} "
        f"{'job s':>7} {'model s':>8} {'ratio':>6} {'(job clk)':>9} {'(padded)':>9} "
        f"{'cpu ratio':>9}"
    )
    for r in scenes:
        cpu_ratio = "-" if r["ratio_cpu"] is None else f"{r['ratio_cpu']:.2f}"
        print(
            f"  {_mp(r['size_mp']):>7} {r['blocks']:>6} {r['crops_run']:>6} "
            f"{100 * r['halo_extra']:>5.1f}% {r['scene_s']:>8.1f} {r['scene_mp_per_s']:>7.3f} "
            f"{r['job_clock_s']:>7.1f} {r['model_only_s']:>8.1f} {r['ratio']:>6.2f} "
            f"{r['ratio_job_clock']:>9.2f} {r['ratio_padded_calls']:>9.2f} {cpu_ratio:>9}"
        )
    print(
        "  (ratio: model s / scene s; MP/s: end to end, scene pixels / scene s; job s: the "
        "job's own clock; (job clk): model s / job s; (padded): as if the model-only path "
        "also ran the job's padded calls; cpu ratio: the same with the workers' CPU seconds)"
    )


def print_memory(scenes: list[dict[str, Any]], sampled: bool) -> float | None:
    print("Worker peak RSS against scene size (target: flat)")
    print(f"  {'scene':>7} {'before MB':>10} {'peak MB':>9} {'driver MB':>10} {'GPU MB':>8}")
    nan = float("nan")
    for r in scenes:
        start = max(r["worker_rss_start_mb"], default=nan)
        peak = max(r["worker_rss_peak_mb"], default=nan)
        g = max(r["gpu_peak_mb"], default=None)
        print(
            f"  {_mp(r['size_mp']):>7} {start:>10.0f} {peak:>9.0f} "
            f"{r['driver_rss_peak_mb']:>10.0f} {'-' if g is None else format(g, '.0f'):>8}"
        )
    growth = None
    if len(scenes) > 1 and sampled:
        peaks = [max(r["worker_rss_peak_mb"]) for r in scenes]
        growth = peaks[-1] / peaks[0]
        pixel_ratio = scenes[-1]["megapixels"] / scenes[0]["megapixels"]
        print(
            f"  largest / smallest scene ({_mp(scenes[-1]['size_mp'])} / "
            f"{_mp(scenes[0]['size_mp'])}, {pixel_ratio:.0f}x the pixels): "
            f"worker peak x{growth:.2f} ({peaks[-1] - peaks[0]:+.0f} MB)"
        )
    if not sampled:
        print("  (no worker on this host: RSS not sampled)")
    print(
        "  (max over workers; before: RSS as the run starts; driver: this process, which "
        "also hosts a LocalCluster's scheduler; scenes run smallest first on warm workers)"
    )
    return growth


def print_profile(profile: dict[str, Any]) -> None:
    nh, nw = profile["native_shape"]
    rh, rw = profile["read_shape"]
    calls = math.ceil(profile["crops"] / profile["batch_size"])
    print(
        f"One block task, timed inside run_block ({_mp(profile['size_mp'])} mosaic, block "
        f"{profile['index']}: {nh}x{nw} native px, read {rh}x{rw}, {profile['crops']} crops, "
        f"{calls} calls of {profile['batch_size']})"
    )
    wall = profile["wall_s"]
    order = [label for label, _, _ in PROFILE_TARGETS]
    order.insert(order.index("stack crops, pad, sum logits"), MODEL_LABEL)
    timers = sorted(
        profile["timers"],
        key=lambda t: (t["thread"] != "task", order.index(t["label"])),
    )
    print(f"  {'self time of':<36} {'thread':>10} {'calls':>6} {'ms':>10} {'of task':>8}")
    task_self = 0.0
    for t in timers:
        if t["thread"] == "task":
            task_self += t["self_s"]
        print(
            f"  {t['label']:<36} {t['thread']:>10} {t['calls']:>6} "
            f"{1000 * t['self_s']:>10.1f} {100 * t['self_s'] / wall:>7.1f}%"
        )
    rest = wall - task_self
    print(
        f"  {'rest of run_block (untimed code)':<36} {'task':>10} {'':>6} "
        f"{1000 * rest:>10.1f} {100 * rest / wall:>7.1f}%"
    )
    print(f"  {'run_block, timed':<36} {'':>10} {'':>6} {1000 * wall:>10.1f} {100.0:>7.1f}%")
    print(
        f"  {'run_block, plain (just before)':<36} {'':>10} {'':>6} "
        f"{1000 * profile['plain_wall_s']:>10.1f}"
    )
    model = sum(t["self_s"] for t in timers if t["label"] == MODEL_LABEL)
    outside = wall - model
    print(
        f"  model {1000 * model / max(calls, 1):.1f} ms/call; the task outside the model "
        f"{1000 * outside:.0f} ms = {1000 * outside / (nh * nw / 1e6):.0f} ms per native MP; "
        f"worker CPU {profile['cpu_s']:.1f} s in {wall:.1f} s"
    )
    print(
        "  (self time: wall time in the function less its timed callees; background: "
        "threads the task starts, overlapping the task thread; the model is synchronised "
        "on CUDA for timing)"
    )


# ----------------------------------------------------------------------------- driver


def run(args: argparse.Namespace) -> dict[str, Any]:
    t_all = time.perf_counter()
    device = resolve_device(args.device)
    defaults = DEFAULTS["cuda" if device.type == "cuda" else "cpu"]
    sizes = _sizes(args.sizes or defaults["sizes"])
    block_size = args.block_size or defaults["block_size"]
    clip_model = args.clip_model or defaults["clip_model"]
    upsampler = args.upsampler or defaults["upsampler"]
    source = Path(args.source)
    if not source.is_file():
        raise UserError(f"--source {source}: no such file (the shared Koeln tile)")
    overrides: dict[str, Any] = {"clip_model": clip_model, "dtype": args.dtype}
    if args.method:
        overrides["method"] = args.method
    # The call arithmetic below needs a number: 'auto' is 1 on the CPU (workers.batching);
    # on CUDA it depends on the loaded model, so this benchmark fixes 8 unless told.
    overrides["batch_size"] = args.batch_size or (CPU_BATCH if device.type == "cpu" else 8)
    cfg = load_config(overrides=overrides)
    classes = parse_classes(args.classes)
    dtype = autocast_dtype(cfg.dtype, device)
    dtype_name = "fp32" if dtype is None else str(dtype).removeprefix("torch.")

    with contextlib.ExitStack() as stack:
        if args.workdir:
            workdir = Path(args.workdir)
            workdir.mkdir(parents=True, exist_ok=True)
        else:
            tmp = tempfile.TemporaryDirectory(prefix="pipeline-efficiency-")
            workdir = Path(stack.enter_context(tmp))

        ups_weights = args.upsampler_weights
        ups_desc = upsampler
        if upsampler != "bilinear":
            if ups_weights is None:
                ckpt = random_upsampler_checkpoint(upsampler, workdir / f"{upsampler}.ckpt")
                ups_weights = str(ckpt)
                ups_desc += " (seeded random init)"
            else:
                ups_desc += f" ({ups_weights})"
        spec = ModelSpec(
            clip_weights="random",
            upsampler=upsampler,
            upsampler_weights=ups_weights,
            cfg=cfg,
            device=args.device,
        )
        with rasterio.open(source) as src:
            native_gsd = abs(src.transform.a)
        f = native_gsd / args.gsd if args.gsd else 1.0

        info = machine_info(device)
        gpu = f", GPU {info['gpu']} (CUDA {info['cuda']})" if info["gpu"] else ", no GPU used"
        grid_desc = f"{args.gsd:g} m (f = {f:.3g})" if args.gsd else "native (no resampling)"
        print("Scene-job efficiency: run_scene against CropSegmenter.crop_logits")
        print(
            f"  machine     {info['cpu']}, {info['cpu_usable']} usable of {info['cpu_count']} "
            f"CPUs, {info['memory_gib']} GiB{gpu}; load average {info['load_average_1m']}"
        )
        print(
            f"  software    torch {info['torch']}, distributed {info['dask']}, "
            f"GDAL {info['gdal']}, reattn-batch {info['reattn_batch']}"
        )
        print(f"  model       {clip_model}, method {cfg.method}, upsampler {ups_desc}")
        print(f"  weights     random (seed {cfg.random_seed}): speed figures only, not accuracy")
        print(
            f"  inference   device {device}, {dtype_name}, crops {cfg.crop} at stride "
            f"{cfg.stride}, batch {cfg.batch_size} (fixed shape); {len(classes.queries)} queries"
        )
        print(
            f"  scenes      {', '.join(_mp(s) for s in sizes)} mosaics of {source.name} "
            f"({native_gsd:g} m), tiles {MOSAIC_TILE} deflate; block {block_size}; "
            f"model grid {grid_desc}"
        )
        print(flush=True)

        halo = halo_table(HALO_SIZES, HALO_BLOCKS, f, cfg.crop, cfg.stride, cfg.batch_size)
        print_halo(halo, cfg.batch_size)
        print(flush=True)

        warm_side = min(WARMUP_SIDE, mosaic_side(sizes[0]))
        warm = build_mosaic(source, workdir / "warmup.tif", warm_side)
        mosaics = {}
        for mp in sizes:
            m = build_mosaic(source, workdir / f"mosaic_{mp:g}mp.tif", mosaic_side(mp))
            mosaics[mp] = m
            print(
                f"mosaic {_mp(mp)}: {m['side']}x{m['side']} px, {m['file_mb']:.0f} MB, "
                f"built in {m['build_s']:.1f} s",
                flush=True,
            )

        def request(path: str, out: Path) -> SceneRequest:
            return SceneRequest(
                scene=path,
                model=spec,
                classes=classes,
                out=out,
                settings=SceneSettings(gsd=args.gsd, block_size=block_size),
                cluster=ClusterSettings(
                    scheduler=args.scheduler,
                    workers=args.workers,
                    threads_per_worker=args.threads_per_worker,
                ),
                overwrite=True,
            )

        # --- the cluster, as the job opens it ---------------------------------------------
        policy = args.omp_wait_policy or ("passive" if device.type == "cpu" else "default")
        if policy == "passive" and not args.scheduler:
            os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # inherited by the workers
        t0 = time.perf_counter()
        client, cinfo = stack.enter_context(connect(request(warm["path"], workdir).cluster))
        pass_connection = "connection" in inspect.signature(run_scene).parameters
        bench = Bench(client, cinfo, spec, pass_connection)
        if not pass_connection and cinfo.torch_threads:
            # run_scene will connect by address, which leaves torch threads to the workers
            # (Dask makes them 1): set what the embedded cluster would give each task
            client.run(_set_torch_threads, cinfo.torch_threads)
        start_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        warmed = client.gather(
            [bench.submit(_warm_worker, spec, classes.queries, worker=w) for w in bench.workers]
        )
        bench.queries = warmed[0]["queries"]
        bench.run_scene(request(warm["path"], workdir / "warmup.zarr"))
        warm_s = time.perf_counter() - t0
        here = socket.gethostname()
        bench.local_pids = [
            w["pid"] for w in warmed if w["host"] == here and psutil.pid_exists(w["pid"])
        ]
        layout = "existing scheduler" if args.scheduler else "LocalCluster (the job's layout)"
        nthreads = sorted({w["nthreads"] for w in bench.workers.values()})
        worker_env = next(iter(client.run(_worker_env).values()))
        env_desc = " ".join(f"{k}={v}" for k, v in worker_env.items() if v is not None)
        print(
            f"cluster: {layout}: {len(bench.workers)} worker(s) x {nthreads} thread(s), "
            f"resources {bench.resources or 'none'}, torch threads per model task "
            f"{cinfo.torch_threads or sorted({w['torch_threads'] for w in warmed})}, model on "
            f"{warmed[0]['device']}; started in {start_s:.1f} s, warmed up (model load + "
            f"{warm_side}x{warm_side} job) in {warm_s:.1f} s"
            + ("" if pass_connection else "; run_scene connects by address")
            + f"; worker env {env_desc or '-'}",
            flush=True,
        )
        print(flush=True)

        # --- scenes --------------------------------------------------------------------------
        scenes = []
        for mp in sizes:
            out = workdir / f"mosaic_{mp:g}mp.zarr"
            row = measure_scene(
                bench, request(mosaics[mp]["path"], out), mosaics[mp], mp, args.sample_interval
            )
            scenes.append(row)
            print(
                f"{_mp(mp)}: scene {row['scene_s']:.1f} s ({row['scene_mp_per_s']:.3f} MP/s), "
                f"{row['blocks']} blocks, {row['crops_run']} crops in "
                f"{row['job_calls_padded']} calls; model only {row['model_only_s']:.1f} s "
                f"({row['model_calls']} calls) -> ratio {row['ratio']:.2f}; "
                f"load average {row['load_average_1m']}",
                flush=True,
            )

        # --- one block task, timed inside ------------------------------------------------------
        profile = None
        if not args.no_profile:
            mp = sizes[-1]
            layout = plan(request(mosaics[mp]["path"], workdir))
            scene_info, grid = layout.scene, layout.grid
            job = BlockTask(
                scene=scene_info,
                model=spec,
                classes=classes,
                grid=grid,
                store=str((workdir / f"mosaic_{mp:g}mp.zarr").absolute()),
                save_confidence=False,
                torch_threads=cinfo.torch_threads,
            )
            rows, cols = grid.counts
            index = (rows // 2) * cols + cols // 2
            future = bench.submit(_profile_block, job, index, bench.queries, worker=bench.slots[0])
            profile = future.result()
            profile["size_mp"] = mp

        plain = None
        if not args.no_plain_check:
            threads = cinfo.torch_threads or warmed[0]["torch_threads"]
            plain = plain_check(bench, PLAIN_CALLS[device.type], threads, workdir, worker_env)

    # --- report ----------------------------------------------------------------------------
    print()
    print_scenes(scenes)
    print()
    growth = print_memory(scenes, bool(bench.local_pids))
    if profile is not None:
        print()
        print_profile(profile)
    if plain is not None:
        print()
        w0, w1 = plain["worker_s"]
        n = plain["calls"]
        print(
            f"Dask worker vs plain process ({n} calls of {cfg.batch_size}, "
            f"{plain['threads']} torch threads, OMP_WAIT_POLICY "
            f"{os.environ.get('OMP_WAIT_POLICY', 'unset')}; plain = a fresh process without "
            f"{', '.join(plain['plain_env_removed'])})"
        )
        trim = plain["plain_malloc_trim_s"]
        trim_desc = (
            ""
            if trim is None
            else f", plain with MALLOC_TRIM_THRESHOLD_={plain['malloc_trim_threshold']} "
            f"{1000 * trim / n:.0f} ms/call"
        )
        print(
            f"  worker {1000 * w0 / n:.0f} ms/call, plain {1000 * plain['plain_s'] / n:.0f} "
            f"ms/call{trim_desc}, worker again {1000 * w1 / n:.0f} ms/call -> worker / plain "
            f"{plain['worker_over_plain']:.2f}"
        )
    wall = time.perf_counter() - t_all
    print(
        f"\nbenchmark {wall:.0f} s (load average now {_load():.2f}); weights random, "
        f"{dtype_name}, {clip_model}, {upsampler}, block {block_size}"
    )
    return {
        "machine": info,
        "settings": {
            "sizes_mp": sizes,
            "block_size": block_size,
            "clip_model": clip_model,
            "method": cfg.method,
            "upsampler": upsampler,
            "upsampler_weights": args.upsampler_weights or "random init",
            "weights": "random",
            "dtype": dtype_name,
            "device": str(device),
            "batch_size": cfg.batch_size,
            "crop": cfg.crop,
            "stride": cfg.stride,
            "gsd": args.gsd,
            "native_gsd": native_gsd,
            "queries": classes.queries,
            "cluster": layout,
            "workers": len(bench.workers),
            "slots": len(bench.slots),
            "torch_threads": cinfo.torch_threads,
            "run_scene_connection": pass_connection,
            "omp_wait_policy": policy,
            "worker_env": worker_env,
            "sample_interval_s": args.sample_interval,
            "config": cfg.as_dict(),
        },
        "cluster_start_s": start_s,
        "warmup_s": warm_s,
        "halo": halo,
        "scenes": scenes,
        "worker_peak_growth": growth,
        "block_profile": profile,
        "worker_vs_plain": plain,
        "seconds": wall,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import logging

    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    try:
        report = run(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str) + "\n")
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
