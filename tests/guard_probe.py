"""Run ONE block task of the tiny model in this process (a real in-process Dask worker)
and print JSON: the memory guard's estimate for it and the measured peak RSS increase.

Used by tests/test_memory_guard.py in a fresh subprocess, so that the process's peak RSS
(``resource.getrusage``) belongs to this one task: python test_probe.py SCENE OUT BLOCK.
"""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path

import psutil


def main(scene: str, out: str, block: int) -> None:
    import torch  # noqa: F401  (imported before the baseline: the runtime is not the task)
    from distributed import Client, LocalCluster

    from pipeline.run.cluster import cluster_info
    from pipeline.run.guard import Source, estimate_block_memory, model_bytes
    from pipeline.run.plan import plan
    from pipeline.run.request import SceneRequest
    from pipeline.run.spine import run_scene
    from pipeline.settings import ModelSettings, SceneSettings
    from workers.classes import parse_classes

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
        run_scene(request, connection=(client, cluster_info(client, 0)))
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    print(json.dumps({"estimate": estimate.total, "measured": peak - baseline,
                      "blocks": len(layout.grid)}))  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
