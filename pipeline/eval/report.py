"""`eval`'s outputs: the JSON record and the printed (rich) tables.

Figures are percent, unrounded in JSON and to two decimals on screen (as mmseg prints
them); a class with no ground truth and no prediction has IoU null / "-". Figures
from random weights are marked as NOT accuracy everywhere they appear.
"""

from __future__ import annotations

import json
import math
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from reattn_batch.eval.metrics import summarise
from reattn_batch.eval.runner import SettingResult
from reattn_batch.workers.classes import ClassList
from reattn_batch.workers.model_spec import describe_weights

REPORTED_NOTE = "as reported in the ReAttnCLIP paper; not measured here"
RANDOM_WARNING = (
    "CLIP weights were RANDOM (--clip-weights random): these figures test the pipeline "
    "and are NOT accuracy"
)


def _pct(value: float) -> float | None:
    return None if math.isnan(value) else 100.0 * float(value)


def _show(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def setting_record(result: SettingResult, classes: ClassList, dataset_key: str | None) -> dict:
    """One setting's figures (percent), counts and model identity."""
    spec = result.setting.spec
    weights = describe_weights(spec)
    stats = summarise(result.counts)
    names = classes.names
    record: dict[str, Any] = {
        "setting": result.setting.name,
        "overrides": result.setting.overrides,
        "config": spec.cfg.as_dict(),
        "model": spec.as_dict(),
        "weights": weights,
        "random_weights": bool(weights["clip"].get("random")),
        "images": result.images,
        "seconds": round(result.seconds, 3),
        "miou": _pct(stats["miou"]),
        "aacc": _pct(stats["aacc"]),
        "macc": _pct(stats["macc"]),
        "iou": {n: _pct(v) for n, v in zip(names, stats["iou"], strict=True)},
        "acc": {n: _pct(v) for n, v in zip(names, stats["acc"], strict=True)},
        "confusion_matrix": result.counts[:-1].tolist(),
        "unlisted_truth_pixels": result.counts[-1].tolist(),
    }
    if dataset_key and dataset_key in result.setting.reported:
        record["reported_miou"] = result.setting.reported[dataset_key]
    return record


def run_record(
    results: list[SettingResult],
    classes: ClassList,
    dataset: dict[str, Any],
    protocol: dict[str, Any],
    preset_reported: dict[str, float],
    grid: Path | None,
) -> dict[str, Any]:
    """The whole run as one JSON-serialisable mapping."""
    key = dataset.get("preset")
    records = [setting_record(r, classes, key) for r in results]
    first = records[0]
    out: dict[str, Any] = {
        "software": "reattn-batch",
        "software_version": version("reattn-batch"),
        "units": (
            "miou, aacc, macc, iou and acc in percent (unrounded); confusion_matrix: "
            "pixels, rows = ground truth class, columns = predicted class; "
            "unlisted_truth_pixels: pixels per predicted class whose ground truth is outside "
            "the classes and not the ignore index (counted as mmseg does)"
        ),
        "dataset": dataset,
        "image_count": results[0].images,
        "limit": dataset.get("limit"),
        "protocol": protocol,
        "classes": classes.as_dict(),
        "config": first["config"],
        "model": first["model"],
        "weights": first["weights"],
        "random_weights": any(r["random_weights"] for r in records),
        "reported_miou": preset_reported,
        "reported_note": REPORTED_NOTE,
        "grid": str(grid) if grid else None,
        "results": records,
    }
    if out["random_weights"]:
        out["warning"] = RANDOM_WARNING
    if len(records) == 1:
        for field in ("miou", "aacc", "macc", "iou", "acc", "confusion_matrix"):
            out[field] = first[field]
        out["unlisted_truth_pixels"] = first["unlisted_truth_pixels"]
    return out


def write_json(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, allow_nan=False) + "\n")


def print_report(record: dict[str, Any], console: Console | None = None) -> None:
    """Per-class IoU for one setting, or one row per setting for a grid; beside the
    preset's reported figures."""
    console = console or Console()
    random = record["random_weights"]
    if random:
        console.print(f"[bold red]WARNING: {RANDOM_WARNING}[/]")
    name = record["dataset"].get("name") or "dataset"
    results = record["results"]
    if len(results) == 1:
        _print_classes(console, name, results[0], record["classes"]["names"])
    else:
        _print_grid(console, name, results)
    _print_summary(console, name, results, record["reported_miou"], random)


def _print_classes(console: Console, name: str, result: dict, names: list[str]) -> None:
    matrix = np.asarray(result["confusion_matrix"], dtype=np.int64)
    table = Table(title=f"{name}: per-class IoU (%), {result['images']} images")
    for column in ("class", "IoU", "Acc", "labelled px", "predicted px"):
        table.add_column(column, justify="left" if column == "class" else "right")
    predicted = matrix.sum(axis=0) + np.asarray(result["unlisted_truth_pixels"])
    for c, class_name in enumerate(names):
        table.add_row(
            class_name,
            _show(result["iou"][class_name]),
            _show(result["acc"][class_name]),
            str(int(matrix[c].sum())),
            str(int(predicted[c])),
        )
    console.print(table)


def _print_grid(console: Console, name: str, results: list[dict]) -> None:
    with_reported = any("reported_miou" in r for r in results)
    table = Table(title=f"{name}: settings, {results[0]['images']} images")
    table.add_column("setting")
    for column in ("mIoU", "aAcc") + (("reported mIoU",) if with_reported else ()):
        table.add_column(column, justify="right")
    for r in results:
        row = [r["setting"], _show(r["miou"]), _show(r["aacc"])]
        if with_reported:
            row.append(_show(r.get("reported_miou")))
        table.add_row(*row)
    console.print(table)


def _print_summary(
    console: Console, name: str, results: list[dict], reported: dict[str, float], random: bool
) -> None:
    table = Table(title=f"{name}: mIoU and aAcc (%)", caption=f"reported: {REPORTED_NOTE}")
    table.add_column("")
    table.add_column("mIoU", justify="right")
    table.add_column("aAcc", justify="right")
    tag = " [RANDOM WEIGHTS: not accuracy]" if random else ""
    for r in results:
        label = f"this run: {r['setting']} ({r['config']['method']}){tag}"
        table.add_row(label, _show(r["miou"]), _show(r["aacc"]))
    for method, value in reported.items():
        table.add_row(f"{method} (reported)", _show(value), "-")
    console.print(table)
