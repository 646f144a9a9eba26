"""`reattn-batch run`: one scene into a label Zarr store (the spine: pipeline/run/spine.py)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import click

from pipeline.cli.options import (
    build_classes,
    build_model_spec,
    cluster_settings,
    local_cluster_options,
    model_options,
    scene_options,
    scene_settings,
    scheduler_options,
    take,
)
from workers.errors import UserError

log = logging.getLogger("reattn_batch")

SCENE_KEYS = ("gsd", "block_size", "bands", "stretch", "variable", "asset", "save_confidence")
CLUSTER_KEYS = ("scheduler", "scheduler_file", "workers", "threads_per_worker")


@click.command("run")
@click.argument("scene")
@model_options
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="Output store (default: <scene stem>.labels.zarr here).",
)
@scene_options
@local_cluster_options
@scheduler_options
@click.option("--overwrite", is_flag=True, help="Replace an existing output store.")
@click.option(
    "--resume",
    is_flag=True,
    help="Finish an existing store of the same run, redoing only unfinished blocks.",
)
def run_command(
    scene: str, out: Path | None, overwrite: bool, resume: bool, **options: Any
) -> None:
    """Map a whole scene (GeoTIFF/COG/Zarr or a STAC Item, local or remote) into a label
    Zarr store."""
    from pipeline.run.request import SceneRequest, default_out
    from pipeline.run.spine import run_scene

    if overwrite and resume:
        raise UserError("pass --overwrite (start again) or --resume (finish), not both")
    settings = scene_settings(take(options, SCENE_KEYS))
    cluster = cluster_settings(take(options, CLUSTER_KEYS))
    spec = build_model_spec(options)
    classes = build_classes(options, spec.cfg.prob_thd)
    request = SceneRequest(
        scene=scene,
        model=spec,
        classes=classes,
        out=out or default_out(scene, settings.asset),
        settings=settings,
        cluster=cluster,
        overwrite=overwrite,
        resume=resume,
    )
    summary = run_scene(request)
    log.info(
        "done: %s (%d blocks, %d computed, %d already done, %d crops, %.3g MP/s)",
        summary.out, summary.blocks, summary.computed, summary.skipped, summary.crops,
        summary.megapixels_per_second,
    )  # fmt: skip
