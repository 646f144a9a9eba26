"""`reattn-batch eval`: benchmark evaluation with SegEarth-OV's protocol (SPEC 4).

The dataset preset (configs/datasets/<name>.yaml) supplies the classes, prob_thd, label
semantics, layout and per-dataset config keys; anything the user sets explicitly
(--classes, --prob-thd, --method, --config, --set) wins over the preset (see
pipeline/eval/settings.py). ``--grid FILE`` runs several named settings on the same images.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import click

from reattn_batch.cli.options import (
    build_classes,
    build_model_spec,
    cluster_settings,
    model_options,
    parse_resize,
    report_option,
    resize_option,
    scheduler_options,
)
from reattn_batch.eval.settings import load_grid, with_preset
from reattn_batch.workers.errors import UserError

log = logging.getLogger("reattn_batch")


@click.command("eval")
@click.option("--dataset", help="Preset (configs/datasets: loveda, potsdam, ...) or a preset YAML.")
@click.option("--data-root", type=click.Path(path_type=Path), help="Dataset in the preset layout.")
@click.option("--images", type=click.Path(path_type=Path), help="Folder of images.")
@click.option("--labels", type=click.Path(path_type=Path), help="Labels, paired by file stem.")
@model_options
@click.option(
    "--reduce-zero-label/--no-reduce-zero-label",
    default=None,
    help="mmseg's label shift (0 -> ignored, others - 1); default: the preset's, else off.",
)
@click.option("--ignore-index", type=int, help="Label value not scored (default: preset's, 255).")
@resize_option
@click.option("--limit", type=int, help="Evaluate the first N images only.")
@click.option(
    "--save-predictions",
    type=click.Path(path_type=Path),
    help="Folder for uint8 PNG predictions (class indices, as scored).",
)
@click.option("--json", "json_out", type=click.Path(path_type=Path), help="Write results here.")
@click.option("--grid", type=click.Path(path_type=Path), help="YAML list of named settings.")
@scheduler_options
@report_option
def eval_command(
    dataset: str | None,
    data_root: Path | None,
    images: Path | None,
    labels: Path | None,
    reduce_zero_label: bool | None,
    ignore_index: int | None,
    resize: str,
    limit: int | None,
    save_predictions: Path | None,
    json_out: Path | None,
    grid: Path | None,
    scheduler: str | None,
    scheduler_file: Path | None,
    report: Path | None,
    **model: Any,
) -> None:
    """Score the model on a labelled benchmark: mIoU, aAcc, per-class IoU (SPEC 4)."""
    from reattn_batch.report import Clock, write_eval_report

    wall = Clock()
    from reattn_batch.eval.datasets import load_preset, select_samples
    from reattn_batch.eval.report import print_report, run_record, write_json
    from reattn_batch.eval.runner import ImageTask, LabelRules, Setting, run_settings
    from reattn_batch.workers.model_spec import describe_weights

    long_side = parse_resize(resize)
    preset = load_preset(dataset) if dataset else None
    spec = build_model_spec(model)
    if preset is not None:
        spec = with_preset(spec, preset, model)
    if model["classes"] is not None or model["classes_file"] is not None:
        classes = build_classes(model, spec.cfg.prob_thd)
        if preset is not None and len(classes.synonyms) != preset.num_classes:
            raise UserError(
                f"{len(classes.synonyms)} classes (background rule applied) but {preset.name} "
                f"labels have {preset.num_classes}: {', '.join(preset.classes)}"
            )
    elif preset is not None:
        classes = preset.class_list()
    else:
        raise UserError("no classes: pass --dataset NAME (a preset) or --classes a,b,c")
    rules = LabelRules(
        num_classes=len(classes.synonyms),
        reduce_zero_label=reduce_zero_label
        if reduce_zero_label is not None
        else bool(preset and preset.reduce_zero_label),
        ignore_index=ignore_index
        if ignore_index is not None
        else (preset.ignore_index if preset else 255),
    )
    samples = select_samples(preset, data_root=data_root, images=images, labels=labels, limit=limit)
    settings = load_grid(grid, spec) if grid else [Setting("default", spec, {}, {})]
    weights = describe_weights(spec)  # fails early, one line, on missing weight files
    if weights["clip"].get("random"):
        log.warning("eval with RANDOM CLIP weights: the figures are NOT accuracy")
    log.info(
        "eval %s: %d images, %d classes, %d setting(s), long side %s",
        preset.name if preset else "images", len(samples), rules.num_classes, len(settings),
        long_side or "native",
    )  # fmt: skip
    cluster = None
    if scheduler or scheduler_file:
        cluster = cluster_settings({"scheduler": scheduler, "scheduler_file": scheduler_file})
    task = ImageTask(classes=classes, rules=rules, long_side=long_side, want_prediction=False)
    results = run_settings(settings, samples, task, save_predictions, cluster)
    record = run_record(
        results,
        classes,
        dataset={
            "preset": preset.key if preset else None,
            "name": preset.name if preset else None,
            "data_root": str(data_root) if data_root else None,
            "images": str(images) if images else None,
            "labels": str(labels) if labels else None,
            "reduce_zero_label": rules.reduce_zero_label,
            "ignore_index": rules.ignore_index,
            "limit": limit,
            "samples": [s.name for s in samples],
            "preset_definition": preset.as_dict() if preset else None,
        },
        protocol={
            "long_side": long_side,
            "resize": "mmcv imrescale (OpenCV INTER_LINEAR)",
            "crop": spec.cfg.crop,
            "stride": spec.cfg.stride,
            "logits_to_label": "bilinear, align_corners=False",
            "scheduler": scheduler or (str(scheduler_file) if scheduler_file else None),
        },
        preset_reported=dict(preset.reported_miou) if preset else {},
        grid=grid,
    )
    print_report(record)
    if json_out is not None:
        write_json(json_out, record)
        log.info("wrote %s", json_out)
    if save_predictions is not None:
        log.info("wrote %d predictions under %s", len(samples) * len(settings), save_predictions)
    if report is not None:
        write_eval_report(report, results, wall_seconds=wall.totals()["total"])
        log.info("wrote report %s", report)
