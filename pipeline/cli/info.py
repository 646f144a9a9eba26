"""`reattn-batch info STORE`: classes, area per class, parameters, progress and fingerprint
of a label store (pipeline/outputs/info.py), as tables or JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click


@click.command("info")
@click.argument("store_path", metavar="STORE", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def info_command(store_path: Path, as_json: bool) -> None:
    """Classes, area per class, parameters, progress and fingerprint of a label STORE."""
    from reattn_batch.outputs.info import store_info
    from reattn_batch.store import open_for_reading, warn_unfinished

    with open_for_reading(store_path) as ls:
        warn_unfinished(ls)
        info = store_info(ls)
    if as_json:
        click.echo(json.dumps(info, indent=2, allow_nan=False))
        return
    print_info(info)


def print_info(info: dict[str, Any]) -> None:
    """The summary as rich tables on stdout."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from reattn_batch.outputs.info import number_text

    console = Console()
    if info["random_weights"]:
        console.print(
            Text(
                "WARNING: made with RANDOM CLIP weights - these labels are for tests and "
                "mean nothing.",
                style="bold white on red",
            )
        )
    progress = info["progress"]
    if info["complete"]:
        state = Text("complete", style="green")
    else:
        state = Text("incomplete (running, interrupted, or resumable)", style="bold yellow")
    if progress:
        state.append(
            f"  {progress['blocks_done']}/{progress['blocks_total']} blocks"
            f" ({number_text(progress['percent'], 1)}%)"
        )

    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    crs = info["crs"]
    crs_text = "none (not georeferenced)"
    if crs:
        crs_text = " ".join(str(v) for v in (crs.get("epsg"), crs.get("name")) if v) or "custom"
    pixels = info["pixels"]
    rows = [
        ("store", info["store"]),
        ("scene", info["scene"] or "-"),
        ("status", state),
        ("size", f"{info['shape']['width']} x {info['shape']['height']} px"),
        ("CRS", crs_text),
        ("pixel size", " x ".join(f"{v:g}" for v in info["pixel_size"])),
        (
            "valid",
            f"{pixels['valid']:,} px ({number_text(info['valid_hectares'])} ha), "
            f"nodata {pixels['nodata']:,} px",
        ),
        ("fingerprint", info["run_fingerprint"] or "-"),
        ("software", f"{info['software']} {info['software_version'] or '?'}"),
    ]
    for key, value in rows:
        head.add_row(key, value)
    console.print(head)

    classes = Table(title="classes", title_justify="left")
    classes.add_column("#", justify="right")
    classes.add_column("class")
    classes.add_column("synonyms")
    classes.add_column("pixels", justify="right")
    classes.add_column("hectares", justify="right")
    classes.add_column("% of valid", justify="right")
    for c in info["classes"]:
        r, g, b = c["colour"]
        name = Text("■ ", style=f"rgb({r},{g},{b})")
        name.append(c["name"])
        classes.add_row(
            str(c["index"]),
            name,
            ", ".join(s for s in c["synonyms"] if s != c["name"]),
            f"{c['pixels']:,}",
            number_text(c["hectares"]),
            number_text(c["percent"], 1),
        )
    console.print(classes)
    if not info["area_available"]:
        console.print(f"area unavailable: {info['area_note']}", style="yellow")
    elif info["area_note"]:
        console.print(f"area converted to hectares from {info['area_note']}", style="yellow")
    if info["unexpected_values"]:
        console.print(
            f"labels outside the class list: {info['unexpected_values']}", style="bold red"
        )

    params = Table.grid(padding=(0, 2))
    params.add_column(style="bold")
    params.add_column()
    weights = info["weights"] or {}
    clip = weights.get("clip") or {}
    clip_text = Text(" ".join(str(clip.get(k, "")) for k in ("source", "name", "digest")).strip())
    if info["random_weights"]:
        clip_text.append("  RANDOM", style="bold red")
    params.add_row("method", str(info["method"] or "-"))
    params.add_row("upsampler", str(info["upsampler"] or "-"))
    params.add_row("CLIP weights", clip_text)
    from reattn_batch.outputs.info import KEY_HYPERPARAMETERS

    hyper = info["hyperparameters"]
    for key in KEY_HYPERPARAMETERS:
        if key in hyper:
            params.add_row(key, json.dumps(hyper[key]))
    if info["model_gsd"] is not None:
        params.add_row("model gsd", f"{info['model_gsd']:g}")
    console.print(Table.grid())
    console.print("[bold]parameters[/bold] (all of them: --json)")
    console.print(params)
