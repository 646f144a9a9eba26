"""The printed tables: halo, scene vs model-only, memory, the block profile."""

from __future__ import annotations

import math
from typing import Any

from efficiency.settings import MODEL_LABEL, PROFILE_TARGETS, mp_text


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
            f"  {mp_text(row['megapixels']):>7} {mg:>12} {row['block']:>6} {row['blocks']:>7} "
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
            f"  {mp_text(r['size_mp']):>7} {r['blocks']:>6} {r['crops_run']:>6} "
            f"{100 * r['halo_extra']:>5.1f}% {r['scene_s']:>8.1f} {r['scene_mp_per_s']:>7.3f} "
            f"{r['job_clock_s']:>7.1f} {r['model_only_s']:>8.1f} {r['ratio']:>6.2f} "
            f"{r['ratio_job_clock']:>9.2f} {r['ratio_padded_calls']:>9.2f} {cpu_ratio:>9}"
        )
    print(
        "  (ratio: model s / scene s; MP/s: end to end, scene pixels / scene s; job s: the "
        "job's own clock; (job clk): model s / job s; (padded): as if the model-only path "
        "also ran the job's padded calls; cpu ratio: the same with the workers' CPU seconds)"
    )


def print_memory(scenes: list[dict[str, Any]]) -> float | None:
    print("Worker peak RSS against scene size (target: flat)")
    print(f"  {'scene':>7} {'before MB':>10} {'peak MB':>9} {'driver MB':>10} {'GPU MB':>8}")
    for r in scenes:
        g = max(r["gpu_peak_mb"], default=None)
        print(
            f"  {mp_text(r['size_mp']):>7} {r['worker_memory_start_mb']:>10.0f} "
            f"{r['worker_memory_peak_mb']:>9.0f} "
            f"{r['driver_rss_peak_mb']:>10.0f} {'-' if g is None else format(g, '.0f'):>8}"
        )
    growth = None
    if len(scenes) > 1:
        peaks = [r["worker_memory_peak_mb"] for r in scenes]
        growth = peaks[-1] / peaks[0]
        pixel_ratio = scenes[-1]["megapixels"] / scenes[0]["megapixels"]
        print(
            f"  largest / smallest scene ({mp_text(scenes[-1]['size_mp'])} / "
            f"{mp_text(scenes[0]['size_mp'])}, {pixel_ratio:.0f}x the pixels): "
            f"worker peak x{growth:.2f} ({peaks[-1] - peaks[0]:+.0f} MB)"
        )
    print(
        "  (workers' process memory summed over the cluster, as their heartbeats report it "
        "(distributed's MemorySampler); before: as the run starts; driver: this process's "
        "RSS, which also hosts a LocalCluster's scheduler; scenes run smallest first on "
        "warm workers)"
    )
    return growth


def print_profile(profile: dict[str, Any]) -> None:
    nh, nw = profile["native_shape"]
    rh, rw = profile["read_shape"]
    calls = math.ceil(profile["crops"] / profile["batch_size"])
    print(
        f"One block task, timed inside run_block ({mp_text(profile['size_mp'])} mosaic, block "
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
