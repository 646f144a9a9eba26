"""Cluster utilisation of a regional job (issue 18 item 3), from the scheduler's task stream.

A job of ``--scenes`` one-block scenes (windows of one synthetic mosaic, each exactly one
block; ``--scene-blocks K``: K blocks in a row) against ONE ``run`` of that mosaic with
the same block size, hence the same block count, on the same cluster: a LocalCluster of
2 workers x 1 thread whose torch is pinned to one thread each (OMP_NUM_THREADS=1, as
run's local cluster sets it for 2 workers on 2 cores), so the two workers are the two
cores and the scheduler's view shows what runs at once. A first mosaic run warms both
workers' model caches and is not counted.

Reported per measured run (one JSON object):

    wall_s             the driver's wall time (run_job / map_scene)
    busy_fraction      per worker: its tasks' compute time / the span from the first
                       task's start to the last task's end on any worker
    scenes_in_flight   the most scenes whose block tasks computed at the same moment
    overhead_s         per scene: its first task's start to its last task's end, minus
                       the time some task of it computed (0 for one-block
                       scenes: measure it with --scene-blocks 2)
    job_over_mosaic    the job's wall time over the mosaic run's (target <= 1.15); the
                       mosaic's blocks also run the crops straddling their neighbours, so
                       job_over_mosaic_per_crop compares the wall time per crop run too

    PYTHONPATH=benchmarks python benchmarks/regional_utilisation.py --json util.json

Defaults: ViT-B/16 with RANDOM weights (the real model's cost, never accuracy), bilinear
upsampler, blocks of 512 px at 0.5 m, 8 scenes.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window

CRS = "EPSG:32632"
GSD = 0.5
EDGE_S = 0.05  # seconds trimmed off each end of a task when counting scenes in flight


def write_mosaic(path: Path, rows: int, cols: int, block: int, seed: int = 0) -> None:
    """A (3, rows*block, cols*block) uint8 GeoTIFF of smooth random texture."""
    import cv2

    height, width = rows * block, cols * block
    rng = np.random.default_rng(seed)
    coarse = rng.random((3, height // 64 + 1, width // 64 + 1))
    data = np.stack([cv2.resize(c, (width, height), interpolation=cv2.INTER_CUBIC) for c in coarse])
    data = np.clip(data * 0.9 + 0.1 * rng.random(data.shape), 0, 1)
    profile = {
        "driver": "GTiff", "width": width, "height": height, "count": 3, "dtype": "uint8",
        "crs": CRS, "transform": from_origin(500000.0, 5600000.0, GSD, GSD),
        "tiled": True, "blockxsize": 256, "blockysize": 256,
    }  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write((data * 255).astype("uint8"))


def cut_scenes(
    mosaic: Path, folder: Path, rows: int, cols: int, block: int, wide: int = 1
) -> list[Path]:
    """One GeoTIFF per ``wide`` blocks in a row of the mosaic (rows x cols scenes),
    georeferenced where it lies in the mosaic."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    with rasterio.open(mosaic) as src:
        for r in range(rows):
            for c in range(cols):
                window = Window(c * block * wide, r * block, block * wide, block)
                profile = src.profile | {
                    "width": block * wide,
                    "height": block,
                    "transform": src.window_transform(window),
                }
                path = folder / f"scene_r{r}_c{c}.tif"
                with rasterio.open(path, "w", **profile) as dst:
                    dst.write(src.read(window=window))
                paths.append(path)
    return paths


def report_figures(figures: dict[str, Any], path: Path | None) -> None:
    """Print the figures as JSON, and write them to ``path`` too when given."""
    text = json.dumps(figures, indent=2)
    print(text)
    if path:
        path.write_text(text + "\n")


def union_seconds(intervals: list[tuple[float, float]]) -> float:
    """Seconds covered by at least one of ``intervals``."""
    total, end = 0.0, -float("inf")
    for s, e in sorted(intervals):
        if e > end:
            total += e - max(s, end)
            end = e
    return total


def stream_figures(records: list[dict[str, Any]], since: float) -> dict[str, Any]:
    """Busy fraction per worker, scenes in flight and per-scene overhead, from the task
    stream's records (``distributed.get_task_stream``): only compute intervals that start
    after ``since`` (``time.time()``; the stream may hand back older records too)."""
    blocks = []  # (scene run, worker, start, stop)
    busy: dict[str, float] = defaultdict(float)
    spans = []
    for rec in records:
        for ss in rec.get("startstops", ()):
            if ss["action"] != "compute" or ss["start"] < since:
                continue
            busy[rec["worker"]] += ss["stop"] - ss["start"]
            spans.append((ss["start"], ss["stop"]))
            key = str(rec["key"])
            if key.startswith("block-"):
                _, fingerprint, token, _index = key.split("-")
                blocks.append((f"{fingerprint}-{token}", ss["start"], ss["stop"]))
    first, last = min(s for s, _ in spans), max(e for _, e in spans)
    span = last - first
    # a worker's next task may be stamped as starting a few ms before its last one is
    # stamped done: intervals trimmed by EDGE_S at each end do not count such overlaps
    events = sorted(
        [(s + EDGE_S, 1, sc) for sc, s, _ in blocks] + [(e - EDGE_S, -1, sc) for sc, _, e in blocks]
    )
    running: dict[str, int] = defaultdict(int)
    most = 0
    for _, step, scene in events:  # ends sort before starts at the same instant
        running[scene] += step
        if running[scene] == 0:
            del running[scene]
        most = max(most, len(running))
    per_scene: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for scene, s, e in blocks:
        per_scene[scene].append((s, e))
    overhead = [
        max(e for _, e in iv) - min(s for s, _ in iv) - union_seconds(iv)
        for iv in per_scene.values()
    ]
    return {
        "task_span_s": round(span, 3),
        "busy_fraction": {w: round(b / span, 3) for w, b in sorted(busy.items())},
        "scenes_in_flight": most,
        "scenes": len(per_scene),
        "block_tasks": len(blocks),
        "overhead_s": {
            "mean": round(float(np.mean(overhead)), 3),
            "max": round(float(np.max(overhead)), 3),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=8, help="scenes (an even number)")
    parser.add_argument(
        "--scene-blocks", type=int, default=1, help="blocks per scene, in a row (default 1)"
    )
    parser.add_argument(
        "--block", type=int, default=512, help="block edge, native px (a multiple of 512)"
    )
    parser.add_argument("--clip-model", default="ViT-B-16")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("distributed").setLevel(logging.WARNING)
    logging.getLogger("reattn_batch").setLevel(logging.INFO)

    import torch
    from distributed import Client, get_task_stream

    from reattn_batch import map_scene
    from reattn_batch.regional.runner import run_job
    from reattn_batch.regional.spec import RegionalJob
    from reattn_batch.run.cluster import local_cluster
    from reattn_batch.settings import ClusterSettings

    rows = 2
    cols = args.scenes // rows
    classes = "building,road,water,tree"
    model = {"clip_weights": "random", "upsampler": "bilinear", "device": "cpu",
             "clip_model": args.clip_model}  # fmt: skip
    figures: dict[str, Any] = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} "
        f"torch threads in the driver",
        "settings": {
            "scenes": rows * cols,
            "blocks_per_scene": args.scene_blocks, "block_px": args.block, "gsd_m": GSD,
            "clip_model": args.clip_model, "weights": "random", "upsampler": "bilinear",
            "cluster": "LocalCluster 2 workers x 1 thread, OMP_NUM_THREADS=1",
        },
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        mosaic = tmp / "mosaic.tif"
        write_mosaic(mosaic, rows, cols * args.scene_blocks, args.block)
        scenes = cut_scenes(mosaic, tmp / "scenes", rows, cols, args.block, args.scene_blocks)
        cluster, torch_threads = local_cluster(ClusterSettings(workers=2, threads_per_worker=1))
        figures["settings"]["worker_torch_threads"] = torch_threads
        with cluster, Client(cluster) as client:
            map_scene(mosaic, classes, tmp / "warm.zarr", client, block_size=args.block, **model)

            with get_task_stream(client) as stream:
                since, start = time.time(), time.perf_counter()
                summary = map_scene(
                    mosaic, classes, tmp / "mosaic.zarr", client, block_size=args.block, **model
                )
                wall = time.perf_counter() - start
            figures["mosaic"] = {
                "wall_s": round(wall, 3), "blocks": summary.blocks, "crops": summary.crops
            }  # fmt: skip
            figures["mosaic"] |= stream_figures(stream.data, since)

            spec = tmp / "job.yaml"
            spec.write_text(
                json.dumps(
                    {
                        "name": "utilisation",
                        "scenes": {"list": [str(p) for p in scenes]},
                        "classes": classes,
                        "model": {
                            "clip_weights": "random",
                            "upsampler": "bilinear",
                            "device": "cpu",
                            "config": {"clip_model": args.clip_model},
                        },
                        "run": {"block_size": args.block},
                        "output_root": str(tmp / "labels"),
                        "cluster": {"scheduler": cluster.scheduler_address},
                    }
                )  # fmt: skip
            )
            job = RegionalJob.load(spec)
            with get_task_stream(client) as stream:
                since, start = time.time(), time.perf_counter()
                report = run_job(job)
                wall = time.perf_counter() - start
            assert report.failed == 0, report.counts
            figures["job"] = {
                "wall_s": round(wall, 3), "counts": report.counts,
                "crops": sum(e.crops for e in report.scenes),
            }  # fmt: skip
            figures["job"] |= stream_figures(stream.data, since)
    job, mosaic = figures["job"], figures["mosaic"]
    figures["job_over_mosaic"] = round(job["wall_s"] / mosaic["wall_s"], 3)
    # the mosaic's blocks also run the crops straddling their neighbours (halo): per crop
    figures["job_over_mosaic_per_crop"] = round(
        (job["wall_s"] / job["crops"]) / (mosaic["wall_s"] / mosaic["crops"]), 3
    )
    report_figures(figures, args.json)


if __name__ == "__main__":
    main()
