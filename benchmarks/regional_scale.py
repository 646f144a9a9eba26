"""The driver's cost per scene of a regional job (issue 18 item 2): ``--scenes`` tiny
one-block scenes (64 x 64 px GeoTIFFs) through ``run_job`` with the tiny model on a
LocalCluster of 2 workers x 1 thread in this process, as ``reattn-batch job run`` starts it.

Sampled every second in the driver process while the job runs: its resident memory
(/proc/self/statm; the embedded scheduler lives in this process too), its open file
descriptors (/proc/self/fd) and how many scenes have ended (the runner's log lines).
Reported (one JSON object):

    wall_s, driver_cpu_s            the job's wall time and this process's CPU time
    per_scene_ms                    both over --scenes
    rss_mb / open_fds               at 10 %, 50 % and 100 % of the scenes ended, and peak
    scenes_in_flight / busy         from the scheduler's task stream (as regional_utilisation)

    PYTHONPATH=benchmarks python benchmarks/regional_scale.py --scenes 10000 --json scale.json

Random weights: the labels mean nothing; this measures the driver only.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.transform import from_origin
from regional_utilisation import CRS, GSD, report_figures, stream_figures

PAGE = os.sysconf("SC_PAGE_SIZE")


def write_tiny_scenes(folder: Path, count: int, side: int = 64) -> list[Path]:
    """``count`` side x side uint8 GeoTIFFs side by side (distinct content and place)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    profile = {"driver": "GTiff", "width": side, "height": side, "count": 3, "dtype": "uint8",
               "crs": CRS}  # fmt: skip
    paths = []
    for i in range(count):
        path = folder / f"tiny_{i:05d}.tif"
        transform = from_origin(500000.0 + i * side * GSD, 5600000.0, GSD, GSD)
        with rasterio.open(path, "w", transform=transform, **profile) as dst:
            dst.write(rng.integers(0, 255, (3, side, side), dtype=np.uint8))
        paths.append(path)
    return paths


class Sampler(threading.Thread):
    """(seconds, scenes ended, RSS MB, open fds) every ``every`` s until stopped."""

    def __init__(self, ended: list[int], every: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.ended, self.every = ended, every
        self.samples: list[tuple[float, int, float, int]] = []
        self.stop = threading.Event()
        self.start_time = time.perf_counter()

    def sample(self) -> None:
        with open("/proc/self/statm") as f:
            rss = int(f.read().split()[1]) * PAGE / 2**20
        fds = len(os.listdir("/proc/self/fd"))
        self.samples.append((time.perf_counter() - self.start_time, self.ended[0], rss, fds))

    def run(self) -> None:
        while not self.stop.wait(self.every):
            self.sample()


class EndCounter(logging.Handler):
    """Counts the runner's "job NAME: scene i/N ..." lines (one per ended scene)."""

    PATTERN = re.compile(r"^job .*: scene \d+/\d+ ")

    def __init__(self, ended: list[int]) -> None:
        super().__init__(logging.INFO)
        self.ended = ended

    def emit(self, record: logging.LogRecord) -> None:
        if self.PATTERN.match(record.getMessage()):
            self.ended[0] += 1


def at_fraction(samples, total: int, fraction: float) -> dict[str, float]:
    """The first sample with at least ``fraction`` of the scenes ended."""
    for seconds, ended, rss, fds in samples:
        if ended >= fraction * total:
            return {"s": round(seconds, 1), "ended": ended, "rss_mb": round(rss, 1), "fds": fds}
    seconds, ended, rss, fds = samples[-1]
    return {"s": round(seconds, 1), "ended": ended, "rss_mb": round(rss, 1), "fds": fds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=10_000)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--tracemalloc",
        action="store_true",
        help="also report the Python heap's growth during the job by file (slower)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    ended = [0]
    runner_log = logging.getLogger("reattn_batch.regional.runner")
    runner_log.setLevel(logging.INFO)
    runner_log.addHandler(EndCounter(ended))
    runner_log.propagate = False

    from distributed import Client, get_task_stream

    from reattn_batch.regional import runner
    from reattn_batch.regional.spec import RegionalJob
    from reattn_batch.run.cluster import local_cluster
    from reattn_batch.settings import ClusterSettings

    figures: dict[str, Any] = {"settings": {
        "scenes": args.scenes, "scene_px": "64 x 64", "clip_model": "ViT-T-16-test",
        "weights": "random", "upsampler": "bilinear",
        "cluster": "embedded LocalCluster, 2 workers x 1 thread",
    }}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        scenes = write_tiny_scenes(tmp / "scenes", args.scenes)
        figures["write_scenes_s"] = round(time.perf_counter() - t, 1)
        spec = tmp / "job.yaml"
        spec.write_text(
            json.dumps(
                {
                    "name": "scale",
                    "scenes": {"glob": str(tmp / "scenes" / "*.tif")},
                    "classes": "building,road,water,tree",
                    "model": {
                        "clip_weights": "random",
                        "upsampler": "bilinear",
                        "device": "cpu",
                        "config": {"clip_model": "ViT-T-16-test"},
                    },
                    "output_root": str(tmp / "labels"),
                }
            )
        )
        job = RegionalJob.load(spec)
        assert len(job.scenes) == len(scenes)
        cluster, _ = local_cluster(ClusterSettings(workers=2, threads_per_worker=1))
        client = Client(cluster)
        if args.tracemalloc:
            tracemalloc.start()
            heap_before = tracemalloc.take_snapshot()
        sampler = Sampler(ended)
        sampler.sample()
        cpu = time.process_time()
        sampler.start()
        since, start = time.time(), time.perf_counter()
        with get_task_stream(client) as stream:
            report = runner.run_job(job, client=client)
        wall = time.perf_counter() - start
        cpu = time.process_time() - cpu
        sampler.stop.set()
        sampler.join()
        sampler.sample()
        if args.tracemalloc:
            growth = tracemalloc.take_snapshot().compare_to(heap_before, "filename")
            figures["heap_growth_kb_per_scene"] = {
                str(stat.traceback[0].filename).split("site-packages/")[-1]: round(
                    stat.size_diff / 1024 / args.scenes, 2
                )
                for stat in growth[:10]
            }
            figures["heap_growth_kb_per_scene_total"] = round(
                sum(stat.size_diff for stat in growth) / 1024 / args.scenes, 2
            )
            tracemalloc.stop()
        assert report.failed == 0, report.counts
        client.close()
        cluster.close()
    samples = sampler.samples
    figures |= {
        "wall_s": round(wall, 1),
        "driver_cpu_s": round(cpu, 1),
        "per_scene_ms": {"wall": round(1e3 * wall / args.scenes, 2),
                         "driver_cpu": round(1e3 * cpu / args.scenes, 2)},
        "before": at_fraction(samples, args.scenes, 0.0),
        "at_10pc": at_fraction(samples, args.scenes, 0.1),
        "at_50pc": at_fraction(samples, args.scenes, 0.5),
        "at_100pc": at_fraction(samples, args.scenes, 1.0),
        "peak_rss_mb": round(max(s[2] for s in samples), 1),
        "peak_fds": max(s[3] for s in samples),
        "counts": report.counts,
    }  # fmt: skip
    figures["task_stream"] = stream_figures(stream.data, since)
    report_figures(figures, args.json)


if __name__ == "__main__":
    main()
