"""`reattn-batch eval`: benchmark evaluation with SegEarth-OV's protocol (SPEC 4).

The dataset preset (configs/datasets/<name>.yaml) supplies the classes, prob_thd,
label semantics, layout and per-dataset config keys; anything the user sets
explicitly (--classes, --prob-thd, --method, --config, --set) wins over the preset.
``--grid FILE`` runs several named settings (rows of config keys) on the same images.

Precedence of config keys, lowest first: configs/method.yaml, the preset's ``config``
and ``prob_thd``, --config FILE, --method/--prob-thd, --set, the grid row.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path
from typing import Any

import click

from pipeline.cli import build_classes, build_model_spec, model_options, parse_resize
from workers.config import read_yaml
from workers.errors import UserError

log = logging.getLogger("reattn_batch")

GRID_KEYS = ("name", "config", "reported_miou", "description")


def _explicit_keys(model: dict[str, Any]) -> set[str]:
    """Config keys the user set on the command line (these override the preset)."""
    from workers.config import parse_set_option

    keys = {parse_set_option(item)[0] for item in model["sets"]}
    if model["config_file"] is not None:
        data = read_yaml(model["config_file"], "--config") or {}
        keys |= set(data)
    if model["method"] is not None:
        keys.add("method")
    if model["prob_thd"] is not None:
        keys.add("prob_thd")
    return keys


def _with_preset(spec, preset, model: dict[str, Any]):
    """The spec with the preset's config keys and prob_thd where the user set none."""
    from workers.config import build_config

    explicit = _explicit_keys(model)
    values = {**preset.config, "prob_thd": preset.prob_thd}
    chosen = {k: v for k, v in values.items() if k not in explicit}
    cfg = build_config({**spec.cfg.as_dict(), **chosen}, source=f"dataset preset {preset.path}")
    return dataclasses.replace(spec, cfg=cfg)


def load_grid(path: Path, base_spec) -> list:
    """--grid FILE: a YAML list of {name, config: {key: value}, reported_miou?, description?}
    -> Settings on top of ``base_spec``; errors name the row and the key."""
    from pipeline.evaluate import Setting
    from workers.config import build_config

    rows = read_yaml(path, "--grid")
    if not isinstance(rows, list) or not rows:
        raise UserError(f"--grid {path}: expected a non-empty list of settings")
    settings, seen = [], set()
    for i, row in enumerate(rows, 1):
        where = f"--grid {path}, setting {i}"
        if not isinstance(row, dict):
            raise UserError(f"{where}: expected a mapping with 'name' and 'config'")
        unknown = sorted(set(row) - set(GRID_KEYS))
        if unknown:
            raise UserError(f"{where}: unknown key '{unknown[0]}'; known: {', '.join(GRID_KEYS)}")
        name = row.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9._+-]+", name):
            raise UserError(f"{where}: key 'name': expected letters, digits, . _ + -; got {name!r}")
        if name in seen:
            raise UserError(f"{where}: key 'name': {name!r} is used twice")
        seen.add(name)
        config = row.get("config") or {}
        reported = row.get("reported_miou") or {}
        if not isinstance(config, dict):
            raise UserError(f"{where} ({name}): key 'config': expected a mapping of config keys")
        if not isinstance(reported, dict):
            raise UserError(f"{where} ({name}): key 'reported_miou': expected dataset: mIoU")
        cfg = build_config({**base_spec.cfg.as_dict(), **config}, source=f"{where} ({name})")
        settings.append(
            Setting(name, dataclasses.replace(base_spec, cfg=cfg), dict(config), dict(reported))
        )
    return settings


def _samples(preset, data_root, images, labels, limit):
    from pipeline.datasets import paired_samples, preset_samples

    if limit is not None and limit < 1:
        raise UserError(f"--limit {limit}: must be at least 1")
    if (images is None) != (labels is None):
        raise UserError("pass --images DIR and --labels DIR together")
    if images is not None and data_root is not None:
        raise UserError("pass --data-root DIR or --images DIR --labels DIR, not both")
    if images is not None:
        suffix = preset.layout.seg_map_suffix if preset else None
        samples = paired_samples(images, labels, suffix)
    elif data_root is not None:
        if preset is None:
            raise UserError(
                "--data-root needs --dataset NAME (for its layout); or pass --images/--labels"
            )
        samples = preset_samples(preset, data_root)
    else:
        raise UserError("nothing to evaluate: pass --data-root DIR, or --images DIR --labels DIR")
    return samples if limit is None else samples[:limit]


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
@click.option("--resize", default="448", show_default=True, help="Long side in px, or 'none'.")
@click.option("--limit", type=int, help="Evaluate the first N images only.")
@click.option(
    "--save-predictions",
    type=click.Path(path_type=Path),
    help="Folder for uint8 PNG predictions (class indices, as scored).",
)
@click.option("--json", "json_out", type=click.Path(path_type=Path), help="Write results here.")
@click.option("--grid", type=click.Path(path_type=Path), help="YAML list of named settings.")
@click.option("--scheduler", help="Dask scheduler address: one task per image on its workers.")
@click.option("--scheduler-file", type=click.Path(path_type=Path), help="Dask scheduler file.")
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
    **model: Any,
) -> None:
    """Score the model on a labelled benchmark: mIoU, aAcc, per-class IoU (SPEC 4)."""
    from pipeline.cluster import ClusterRequest
    from pipeline.datasets import load_preset
    from pipeline.eval_report import print_report, run_record, write_json
    from pipeline.evaluate import ImageTask, LabelRules, Setting, run_settings
    from workers.model_spec import describe_weights

    long_side = parse_resize(resize)
    preset = load_preset(dataset) if dataset else None
    spec = build_model_spec(model)
    if preset is not None:
        spec = _with_preset(spec, preset, model)
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
    samples = _samples(preset, data_root, images, labels, limit)
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
        cluster = ClusterRequest(scheduler=scheduler, scheduler_file=scheduler_file)
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
