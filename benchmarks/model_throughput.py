"""Crops per second of ``Segmenter.crop_logits``, per method and batch size.

Speed figures only: the CLIP weights are always ``random`` (seeded, SPEC 2.1), so the
logits mean nothing; the arithmetic is the real model's. The machine this runs on is
shared and noisy, so every figure comes from one run in which the methods are timed
interleaved (a repetition times each method once, in alternating order), and each
figure is the median over repetitions. The reattnclip / segearth-ov ratio is the
median of the per-repetition ratios of the two methods' times (the ratio of the
table's medians is printed beside it).

    python benchmarks/model_throughput.py --quick
    python benchmarks/model_throughput.py --methods segearth-ov,reattnclip --batch-sizes 1,8
    python benchmarks/model_throughput.py --device cuda --dtype fp16 --json out.json

Crops are random normal tensors already on the device (the host-to-device copy and the
crop grid are not timed); every call has the same batch shape (the crop count is rounded
up to a multiple of the batch size).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from reattn_batch.workers.backbone import load_backbone
from reattn_batch.workers.classes import parse_classes
from reattn_batch.workers.config import DTYPES, METHODS, load_config
from reattn_batch.workers.errors import UserError
from reattn_batch.workers.segmenter import Segmenter, autocast_dtype, resolve_device
from reattn_batch.workers.text import query_embeddings
from reattn_batch.workers.upsampler import JBUOne, JBUStack, load_upsampler

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for benchmarks.*

from benchmarks.call_timer import seconds_per_call  # noqa: E402

DEFAULT_CLIP_MODEL = "ViT-B-16-quickgelu"
QUICK_CLIP_MODEL = "ViT-T-16-test"
DEFAULT_CLASSES = "building,road,tree,low vegetation,water,bare soil,car,cropland"
RATIO_PAIR = ("reattnclip", "segearth-ov")  # numerator, denominator

# Defaults that depend on the device (CPU, CUDA) or on --quick.
DEFAULTS = {
    # CPU: 8 crops keep the full ViT-B/16 sweep (six methods) under 10 minutes on 2 cores
    # (7.5 minutes measured on a shared, heavily loaded machine).
    "cpu": {"batch_sizes": "1,4,8", "crops": 8, "warmup": 1, "repeats": 3},
    "cuda": {"batch_sizes": "1,8,16,32,64", "crops": 256, "warmup": 3, "repeats": 5},
    "quick": {"batch_sizes": "1,4", "crops": 4, "warmup": 1, "repeats": 3},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="(default auto)"
    )
    p.add_argument(
        "--clip-model",
        default=None,
        help=f"open_clip architecture (default {DEFAULT_CLIP_MODEL}; "
        f"{QUICK_CLIP_MODEL} is a tiny one for quick runs)",
    )
    p.add_argument(
        "--methods",
        default=",".join(METHODS),
        help="comma-separated (default all): " + ", ".join(METHODS),
    )
    p.add_argument(
        "--batch-sizes",
        default=None,
        help=f"comma-separated (default {DEFAULTS['cpu']['batch_sizes']} on CPU, "
        f"{DEFAULTS['cuda']['batch_sizes']} on CUDA)",
    )
    p.add_argument(
        "--upsampler",
        choices=("bilinear", "jbu_one", "jbu_stack"),
        default="bilinear",
        help="(default bilinear)",
    )
    p.add_argument(
        "--upsampler-weights",
        default=None,
        help="a SimFeatUp/FeatUp .ckpt; without it jbu_one/jbu_stack are randomly initialised",
    )
    p.add_argument(
        "--dtype",
        choices=DTYPES,
        default="auto",
        help="autocast dtype on CUDA (default auto = fp16); the CPU always runs fp32",
    )
    p.add_argument(
        "--crops",
        type=int,
        default=None,
        help=f"crops per measurement (default {DEFAULTS['cpu']['crops']} on CPU, "
        f"{DEFAULTS['cuda']['crops']} on CUDA)",
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="untimed calls per method and batch size "
        f"(default {DEFAULTS['cpu']['warmup']} on CPU, {DEFAULTS['cuda']['warmup']} on CUDA)",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="interleaved repetitions; figures are their median "
        f"(default {DEFAULTS['cpu']['repeats']} on CPU, {DEFAULTS['cuda']['repeats']} on CUDA)",
    )
    p.add_argument(
        "--classes",
        default=DEFAULT_CLASSES,
        help="comma-separated class names, synonyms with '/' (default 8 classes); "
        "'background' is put first",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's own choice, usually the physical cores)",
    )
    p.add_argument("--json", default=None, metavar="OUT", help="write every figure to OUT")
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run: {QUICK_CLIP_MODEL}, batch sizes {DEFAULTS['quick']['batch_sizes']}, "
        f"{DEFAULTS['quick']['crops']} crops (explicit options still win)",
    )
    return p.parse_args(argv)


def _int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{what} {text!r}: expected comma-separated integers") from None
    if not values or any(v < 1 for v in values):
        raise UserError(f"{what} {text!r}: expected positive integers")
    return list(dict.fromkeys(values))


def _methods(text: str) -> list[str]:
    methods = list(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise UserError(f"--methods: unknown {bad or text!r}; choose from {', '.join(METHODS)}")
    return methods


def _cpu_name() -> str:
    name = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return name or platform.machine() or "unknown CPU"


def _loadavg() -> list[float] | None:
    """1, 5 and 15 minute load averages (a noisy machine shows here), where the OS has them."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def machine_info(device: torch.device, dtype: torch.dtype | None, clip_model: str) -> dict:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    info: dict[str, Any] = {
        "device": str(device),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "cpu_usable": usable,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "dtype": "fp32" if dtype is None else str(dtype).removeprefix("torch."),
        "weights": "random",
        "clip_model": clip_model,
        "loadavg_start": _loadavg(),
    }
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    else:
        info["device_name"] = f"{info['cpu']} ({usable} usable of {os.cpu_count()} CPUs)"
    return info


def build_upsampler(kind: str, weights: str | None, feat_dim: int) -> torch.nn.Module | None:
    if kind == "bilinear":
        return None
    if weights is not None:
        return load_upsampler(kind, weights, feat_dim)
    module = (JBUOne if kind == "jbu_one" else JBUStack)(feat_dim)
    return module.eval().requires_grad_(False)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(seg: Segmenter, crops: torch.Tensor, calls: int) -> tuple[float, int | None]:
    """Seconds for ``calls`` calls of crop_logits on ``crops`` (``torch.utils.benchmark``'s
    Timer, CUDA synchronised), and CUDA peak bytes."""
    device = seg.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = seconds_per_call(lambda: seg.crop_logits(crops), calls) * calls
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return seconds, peak


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.threads is not None:
        if args.threads < 1:
            raise UserError("--threads must be at least 1")
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    defaults = DEFAULTS["quick" if args.quick else device.type]
    clip_model = args.clip_model or (QUICK_CLIP_MODEL if args.quick else DEFAULT_CLIP_MODEL)
    batch_sizes = _int_list(args.batch_sizes or defaults["batch_sizes"], "--batch-sizes")
    n_crops = args.crops if args.crops is not None else defaults["crops"]
    warmup = args.warmup if args.warmup is not None else defaults["warmup"]
    repeats = args.repeats if args.repeats is not None else defaults["repeats"]
    if n_crops < 1 or warmup < 0 or repeats < 1:
        raise UserError("--crops and --repeats must be at least 1, --warmup at least 0")
    methods = _methods(args.methods)
    classes = parse_classes(args.classes)

    cfgs = {
        m: load_config(overrides={"method": m, "clip_model": clip_model, "dtype": args.dtype})
        for m in methods
    }
    dtype = autocast_dtype(args.dtype, device)
    if device.type == "cpu" and args.dtype not in ("auto", "fp32"):
        print(f"note: --dtype {args.dtype} has no effect on the CPU, which runs fp32")

    t0 = time.perf_counter()
    backbone = load_backbone("random", clip_model, cfgs[methods[0]].random_seed)
    queries = query_embeddings(backbone, classes.queries)
    feat_dim = int(backbone.model.visual.proj.shape[1])
    upsampler = build_upsampler(args.upsampler, args.upsampler_weights, feat_dim)
    segs = {m: Segmenter(backbone, cfgs[m], queries, upsampler).to(device) for m in methods}
    setup_s = time.perf_counter() - t0
    crop = cfgs[methods[0]].crop

    info = machine_info(device, dtype, clip_model)
    upsampler_desc = args.upsampler
    if args.upsampler != "bilinear":
        upsampler_desc += f" ({args.upsampler_weights or 'random init'})"
    print("Model throughput of Segmenter.crop_logits")
    print(f"  device      {info['device_name']}")
    print(f"  torch       {info['torch']} ({info['torch_threads']} threads)")
    print(f"  dtype       {info['dtype']}")
    print("  weights     random (speed figures only, not accuracy)")
    print(f"  clip model  {clip_model}")
    print(f"  upsampler   {upsampler_desc}")
    print(f"  queries     {len(classes.queries)} ({', '.join(classes.queries)})")
    print(
        f"  protocol    {crop}x{crop} crops, {n_crops} per measurement, "
        f"{warmup} warm-up call(s), median of {repeats} interleaved repetition(s)"
    )
    print(f"  set-up      {setup_s:.1f} s (weights, text queries)")
    print(f"  load avg    {info['loadavg_start']} (1/5/15 min, at start)")
    print(flush=True)

    gen = torch.Generator().manual_seed(0)
    # per_crop[m][b]: seconds per crop, one per repetition; peak[m][b]: max CUDA bytes.
    per_crop: dict[str, dict[int, list[float]]] = {m: {} for m in methods}
    peak: dict[str, dict[int, int | None]] = {m: {} for m in methods}
    calls_of: dict[int, int] = {}
    t_bench = time.perf_counter()
    for b in batch_sizes:
        calls = math.ceil(n_crops / b)
        calls_of[b] = calls
        crops = torch.randn(b, 3, crop, crop, generator=gen).to(device)
        for m in methods:
            for _ in range(warmup):
                segs[m].crop_logits(crops)
            sync(device)
            per_crop[m][b] = []
            peak[m][b] = None
        for rep in range(repeats):
            order = methods if rep % 2 == 0 else methods[::-1]
            for m in order:
                seconds, bytes_ = time_calls(segs[m], crops, calls)
                per_crop[m][b].append(seconds / (calls * b))
                if bytes_ is not None:
                    peak[m][b] = max(peak[m][b] or 0, bytes_)
        done = ", ".join(f"{m} {1.0 / statistics.median(per_crop[m][b]):.2f}" for m in methods)
        print(f"  batch {b}: {calls * b} crops x {repeats} reps (crops/s: {done})", flush=True)
    bench_s = time.perf_counter() - t_bench
    print()

    results: dict[str, dict[str, dict[str, Any]]] = {}
    for m in methods:
        results[m] = {}
        for b in batch_sizes:
            med = statistics.median(per_crop[m][b])
            results[m][str(b)] = {
                "crops_timed": calls_of[b] * b,
                "calls": calls_of[b],
                "seconds_per_crop_reps": per_crop[m][b],
                "crops_per_s": 1.0 / med,
                "ms_per_crop": 1000.0 * med,
                "peak_mem_bytes": peak[m][b],
            }

    name_w = max(len("method"), *(len(m) for m in methods))
    header = f"{'method':<{name_w}} " + " ".join(f"{'B=' + str(b):>9}" for b in batch_sizes)

    def table(title: str, key: str, fmt: str, scale: float = 1.0) -> None:
        print(title)
        print(header)
        for m in methods:
            cells = []
            for b in batch_sizes:
                v = results[m][str(b)][key]
                cells.append(f"{'-':>9}" if v is None else format(v * scale, fmt).rjust(9))
            print(f"{m:<{name_w}} " + " ".join(cells))
        print()

    table("crops/s (median; higher is better)", "crops_per_s", ".2f")
    table("ms/crop (median)", "ms_per_crop", ".1f")
    if device.type == "cuda":
        table("peak CUDA memory allocated, MiB (incl. weights)", "peak_mem_bytes", ".0f", 2**-20)

    ratios: dict[str, Any] = {}
    num, den = RATIO_PAIR
    if num in methods and den in methods:
        for b in batch_sizes:
            reps = [a / c for a, c in zip(per_crop[num][b], per_crop[den][b], strict=True)]
            med = statistics.median(reps)
            of_medians = results[num][str(b)]["ms_per_crop"] / results[den][str(b)]["ms_per_crop"]
            ratios[str(b)] = {"median": med, "reps": reps, "of_medians": of_medians}
            spread = ", ".join(f"{r:.2f}" for r in reps)
            print(
                f"{num} / {den} time ratio at batch {b}: {med:.2f}  "
                f"(median of paired repetitions: {spread}; ratio of the medians {of_medians:.2f})"
            )
    else:
        print(f"({num} / {den} time ratio needs both methods in --methods)")
    info["loadavg_end"] = _loadavg()
    print(
        f"\nbenchmark {bench_s:.0f} s, set-up {setup_s:.0f} s; weights random, {info['dtype']}; "
        f"load avg at end {info['loadavg_end']}"
    )

    return {
        "machine": info,
        "settings": {
            "methods": methods,
            "batch_sizes": batch_sizes,
            "crops": n_crops,
            "warmup": warmup,
            "repeats": repeats,
            "upsampler": args.upsampler,
            "upsampler_weights": args.upsampler_weights,
            "queries": classes.queries,
            "crop": crop,
            "config": {m: cfgs[m].as_dict() for m in methods},
        },
        "results": results,
        "time_ratio": {f"{num}/{den}": ratios},
        "seconds": {"setup": setup_s, "benchmark": bench_s},
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        report = run(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
