"""`reattn-batch run`: one scene into a label Zarr store (the spine: pipeline/run/spine.py)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import click

from reattn_batch.cli.options import (
    build_classes,
    build_model_spec,
    cluster_settings,
    local_cluster_options,
    model_options,
    owns_process,
    report_option,
    scene_options,
    scene_settings,
    scheduler_options,
    take,
)
from reattn_batch.settings import SceneSettings, option_default
from reattn_batch.workers.errors import UserError

log = logging.getLogger("reattn_batch")

SCENE_KEYS = (
    "gsd", "block_size", "bands", "stretch", "variable", "asset", "save_confidence",
    "no_worker_timeout",
)  # fmt: skip
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
@click.option(
    "--no-worker-timeout",
    type=float,
    default=option_default(SceneSettings, "no_worker_timeout"),
    show_default=True,
    help="Seconds without any worker able to run the tasks (none at all, or none with "
    "the GPU resource they request) before the run ends with an error.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing output store.")
@click.option(
    "--resume",
    is_flag=True,
    help="Finish an existing store of the same run, redoing only unfinished blocks.",
)
@report_option
def run_command(
    scene: str,
    out: Path | None,
    overwrite: bool,
    resume: bool,
    report: Path | None,
    **options: Any,
) -> None:
    """Map a whole scene (GeoTIFF/COG/Zarr or a STAC Item, local or remote) into a label
    Zarr store."""
    from reattn_batch.report import Clock, write_run_report
    from reattn_batch.run.request import SceneRequest, default_out
    from reattn_batch.run.spine import run_scene
    from reattn_batch.run.stop import stop_on_signals

    clock = Clock()
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
        out=out or default_out(scene),
        settings=settings,
        cluster=cluster,
        overwrite=overwrite,
        resume=resume,
    )
    # SIGTERM, SIGINT: tasks cancelled, records flushed, one line
    with stop_on_signals(restore_after_stop=not owns_process()):
        summary = run_scene(request)
    log.info(
        "done: %s (%d blocks, %d computed, %d already done, %d crops, %.3g MP/s)",
        summary.out, summary.blocks, summary.computed, summary.skipped, summary.crops,
        summary.megapixels_per_second,
    )  # fmt: skip
    if report is not None:
        write_run_report(report, summary, wall_seconds=clock.totals()["total"])
        log.info("wrote report %s", report)
