"""One-command GPU benchmark of the model (issue 9, item 6). Speed figures, random weights.

    python benchmarks/gpu_bench.py --json gpu.json            # on a CUDA machine
    python benchmarks/gpu_bench.py --device cpu --quick       # smoke run anywhere

Installs nothing; uses the repo's own dependencies. Measures, per method:
- crops/s at fp32 / fp16 / bf16 and several batch sizes (whole ``crop_logits``), with the
  encoder and the upsampler timed apart at the largest batch;
- achieved TFLOP/s from the analytic FLOPs of benchmarks/flops.py (encoder, upsampler),
  against the device's bf16 dense peak (``--peak-tflops``, else a small table by name);
- peak GPU memory per setting;
- fp16 / bf16 logits against fp32 (max |difference|, argmax agreement);
- batch-position independence: a crop's logits at position 0 and at the last position of
  a fixed-shape batch, compared bitwise (deterministic algorithms switched on).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from functools import partial
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.call_timer import seconds_per_call  # noqa: E402
from benchmarks.flops import VitShape, encoder_flops, upsampler_flops  # noqa: E402
from benchmarks.model_throughput import build_upsampler, machine_info  # noqa: E402
from reattn_batch.workers.backbone import load_backbone  # noqa: E402
from reattn_batch.workers.classes import parse_classes  # noqa: E402
from reattn_batch.workers.config import load_config  # noqa: E402
from reattn_batch.workers.encoder import encode_crops  # noqa: E402
from reattn_batch.workers.segmenter import Segmenter, resolve_device  # noqa: E402
from reattn_batch.workers.text import query_embeddings  # noqa: E402
from reattn_batch.workers.upsampled_logits import upsampled_cosines  # noqa: E402

CLASSES = "road/parking lot,building,low vegetation,tree,car,clutter/background"
# bf16 dense tensor-core peak, TFLOP/s (vendor data sheets; SXM parts).
BF16_PEAK = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0,
             "A10": 125.0, "V100": 125.0, "T4": 65.0}  # fmt: skip
DTYPES = ("fp32", "fp16", "bf16")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--quick", action="store_true", help="tiny model, small batches (smoke run)")
    p.add_argument("--methods", default="segearth-ov,reattnclip")
    p.add_argument("--batch-sizes", default=None, help="default 1,8,32,64 (quick: 1,2)")
    p.add_argument("--upsampler", default="jbu_stack", choices=("jbu_one", "jbu_stack"))
    p.add_argument("--upsampler-weights", default=None, help="(default: random init)")
    p.add_argument("--repeats", type=int, default=None, help="timed calls (default 5; quick 1)")
    p.add_argument("--peak-tflops", type=float, default=None, help="bf16 dense peak of the device")
    p.add_argument("--json", default=None, metavar="OUT")
    return p.parse_args(argv)


def timed(fn, repeats: int) -> float:
    """Mean seconds of ``fn()`` over ``repeats`` calls (``torch.utils.benchmark.Timer``)."""
    return seconds_per_call(fn, repeats)


def peak_tflops(device: torch.device, given: float | None) -> float | None:
    if given is not None or device.type != "cuda":
        return given
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in BF16_PEAK.items() if k in name), None)


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32
        torch.backends.cudnn.allow_tf32 = False
    clip_model = "ViT-T-16-test" if args.quick else "ViT-B-16-quickgelu"
    batches = [
        int(b) for b in (args.batch_sizes or ("1,2" if args.quick else "1,8,32,64")).split(",")
    ]
    repeats = args.repeats or (1 if args.quick else 5)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    classes = parse_classes(CLASSES)
    backbone = load_backbone("random", clip_model, 0)
    queries = query_embeddings(backbone, classes.queries)
    feat_dim = int(backbone.visual.proj.shape[1])
    ups = build_upsampler(args.upsampler, args.upsampler_weights, feat_dim)
    vit = VitShape(
        width=backbone.width,
        mlp=backbone.visual.transformer.resblocks[0].mlp.c_fc.out_features,
        layers=len(backbone.visual.transformer.resblocks),
        patch=backbone.patch_size,
        embed=feat_dim,
    )
    peak = peak_tflops(device, args.peak_tflops)
    info = machine_info(device, None, clip_model)
    info["bf16_peak_tflops"] = peak
    gen = torch.Generator().manual_seed(0)
    results: dict[str, Any] = {"machine": info, "settings": vars(args), "methods": {}}
    print(f"gpu_bench on {info['device_name']}, {clip_model}, {args.upsampler}, random weights")
    for method in methods:
        out: dict[str, Any] = {"throughput": {}, "precision": {}}
        results["methods"][method] = out
        logits_of: dict[str, torch.Tensor] = {}
        for dtype in DTYPES:
            if device.type == "cpu" and dtype != "fp32":
                continue  # the CPU runs fp32 only
            cfg = load_config(
                overrides={"method": method, "clip_model": clip_model, "dtype": dtype}
            )
            seg = Segmenter(backbone, cfg, queries, upsampler=ups).to(device)
            enc_f = encoder_flops(cfg, vit)
            ups_f = upsampler_flops(cfg, args.upsampler, len(classes.queries), vit)
            for b in batches:
                crops = torch.randn(b, 3, cfg.crop, cfg.crop, generator=gen).to(device)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                try:
                    total = timed(partial(seg.crop_logits, crops), repeats)
                except torch.OutOfMemoryError:
                    print(f"  {method} {dtype} B={b}: out of memory")
                    break
                with torch.no_grad(), seg._autocast():
                    dense = encode_crops(backbone, cfg, crops)
                    enc = timed(partial(encode_crops, backbone, cfg, crops), repeats)
                    up_call = partial(
                        upsampled_cosines, ups, dense.patches, crops, seg.queries,
                        cfg.upsampler_path,
                    )  # fmt: skip
                    upt = timed(up_call, repeats)
                mem = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
                row = {
                    "crops_per_s": b / total,
                    "encoder_s_per_crop": enc / b,
                    "upsampler_s_per_crop": upt / b,
                    "upsampler_share": upt / (enc + upt),
                    "encoder_tflops": enc_f * b / enc / 1e12,
                    "upsampler_tflops": ups_f * b / upt / 1e12,
                    "encoder_share_of_bf16_peak": (enc_f * b / enc / 1e12 / peak) if peak else None,
                    "peak_mem_mib": mem / 2**20 if mem is not None else None,
                }
                out["throughput"][f"{dtype}/B={b}"] = row
                print(
                    f"  {method:<12} {dtype} B={b:<3} {row['crops_per_s']:8.2f} crops/s  "
                    f"encoder {row['encoder_tflops']:.3f} TFLOP/s, upsampler "
                    f"{100 * row['upsampler_share']:.0f} % of the time"
                    + (f", peak {row['peak_mem_mib']:.0f} MiB" if mem is not None else ""),
                    flush=True,
                )
            check = torch.randn(4, 3, cfg.crop, cfg.crop, generator=gen).to(device)
            logits_of[dtype] = seg.crop_logits(check).float()
            if dtype == "fp32":
                out["batch_position_independent"] = position_check(seg, check, device)
        for dtype in ("fp16", "bf16"):
            if dtype in logits_of:
                a, ref = logits_of[dtype], logits_of["fp32"]
                out["precision"][dtype] = {
                    "max_abs_diff_vs_fp32": float((a - ref).abs().max()),
                    "argmax_agreement": float((a.argmax(1) == ref.argmax(1)).float().mean()),
                }
                print(f"  {method:<12} {dtype} vs fp32: {out['precision'][dtype]}")
        print(f"  {method:<12} batch-position independent: {out['batch_position_independent']}")
    return results


def position_check(seg: Segmenter, crops: torch.Tensor, device: torch.device) -> bool:
    """Crop 0 at the first and at the last position of the same fixed-shape batch."""
    torch.use_deterministic_algorithms(True, warn_only=True)
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    try:
        first = seg.crop_logits(crops)[0]
        moved = torch.cat([crops[1:], crops[:1]])
        last = seg.crop_logits(moved)[-1]
        return bool(torch.equal(first, last))
    finally:
        torch.use_deterministic_algorithms(False)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str) + "\n")
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
