"""Run ONE block task of the tiny model in this process (a real in-process Dask worker)
and print JSON: the memory guard's estimate for it and the measured peak RSS increase.

Used by tests/test_memory_guard.py in a fresh subprocess: python guard_probe.py SCENE OUT
BLOCK. The peak is the kernel's high-water RSS of this process's memory map (VmHWM),
reset to the current RSS at the baseline (``/proc/self/clear_refs``), so that it belongs
to the block task alone. Not ``getrusage(RUSAGE_SELF).ru_maxrss``: Linux carries the
PARENT's high-water RSS into a child across vfork/exec (the way Python starts
subprocesses), so under a pytest process that had loaded ViT-B models it read 1.9-2.4 GB
for a task that peaks at 0.23 GB.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import psutil


def reset_peak_rss() -> None:
    """Set this process's VmHWM to its current RSS (Linux ``clear_refs`` value 5)."""
    Path("/proc/self/clear_refs").write_text("5")


def peak_rss() -> int:
    """This process's high-water RSS (VmHWM) in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024  # kB
    raise RuntimeError("no VmHWM in /proc/self/status")


def main(scene: str, out: str, block: int) -> None:
    import torch  # noqa: F401  (imported before the baseline: the runtime is not the task)
    from distributed import Client, LocalCluster

    from reattn_batch.run.cluster import cluster_info
    from reattn_batch.run.guard import Source, estimate_block_memory, model_bytes
    from reattn_batch.run.plan import plan
    from reattn_batch.run.request import SceneRequest
    from reattn_batch.run.spine import run_scene
    from reattn_batch.settings import ModelSettings, SceneSettings
    from reattn_batch.workers.classes import parse_classes

    spec = ModelSettings(clip_weights="random", upsampler="bilinear", device="cpu").model_spec(
        ["clip_model=ViT-T-16-test"]
    )
    classes = parse_classes("building,road,water,tree", None, True)
    request = SceneRequest(
        scene=scene, model=spec, classes=classes, out=Path(out),
        settings=SceneSettings(block_size=block),
    )  # fmt: skip
    layout = plan(request)
    estimate = estimate_block_memory(
        layout.grid,
        queries=len(classes.queries),
        batch=spec.cfg.batch_size,
        upsampler=spec.upsampler,
        source=Source.of(layout.scene),
        model_bytes=model_bytes(spec.cfg.clip_model),
    )
    with LocalCluster(processes=False, n_workers=1, threads_per_worker=1,
                      dashboard_address=":0") as cluster, Client(cluster) as client:  # fmt: skip
        baseline = psutil.Process().memory_info().rss
        reset_peak_rss()
        run_scene(request, connection=(client, cluster_info(client, 0)))
        peak = peak_rss()
    print(json.dumps({"estimate": estimate.total, "measured": peak - baseline,
                      "blocks": len(layout.grid)}))  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
