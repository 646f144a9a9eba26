"""`reattn-batch export` and `reattn-batch info`: outputs of a label store for people.

Registered on the main group in ``pipeline/cli.py`` (``cli.add_command``); a UserError
becomes one line on stderr and exit status 2 there.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import click

from workers.errors import UserError

log = logging.getLogger("reattn_batch")


@click.command("export")
@click.argument("store_path", metavar="STORE", type=click.Path(path_type=Path))
@click.option(
    "--cog",
    type=click.Path(path_type=Path),
    help="Write a Cloud-Optimised GeoTIFF (palette, mode overviews, the store's CRS).",
)
@click.option(
    "--quicklook",
    type=click.Path(path_type=Path),
    help="Write a PNG colour map with a legend.",
)
@click.option(
    "--max-size",
    type=int,
    default=1024,
    show_default=True,
    help="Long side of the quicklook's map in pixels.",
)
@click.option(
    "--overview-resampling",
    type=click.Choice(["mode", "nearest"]),
    default="mode",
    show_default=True,
    help="How the COG's overviews are computed.",
)
@click.option(
    "--compress",
    type=click.Choice(["deflate", "zstd"]),
    default="deflate",
    show_default=True,
    help="COG compression (ZSTD needs GDAL >= 2.3 to read).",
)
@click.option(
    "--vector",
    type=click.Path(path_type=Path),
    help="Write class polygons: .gpkg, .fgb or .parquet (GeoParquet), by extension.",
)
@click.option(
    "--classes", help="Classes to polygonize, comma-separated (default: all but background)."
)
@click.option(
    "--min-area", type=float, default=0.0, help="Drop polygons smaller than this (CRS units^2)."
)
@click.option(
    "--simplify",
    type=float,
    default=0.0,
    help="Topology-preserving simplification tolerance (CRS units).",
)
@click.option(
    "--connectivity",
    type=click.Choice(["4", "8"]),
    default="4",
    show_default=True,
    help="Pixel connectivity of a region.",
)
@click.option(
    "--stac",
    type=click.Path(path_type=Path),
    help="Write a STAC Item for the store (and these outputs) into this folder.",
)
@click.option(
    "--scheduler", help="Polygonize on an existing Dask scheduler (default: a local cluster)."
)
@click.option(
    "--workers", type=int, help="Local cluster workers for --vector (default: one per core)."
)
@click.option("--overwrite", is_flag=True, help="Replace existing output files.")
def export_command(
    store_path: Path,
    cog: Path | None,
    quicklook: Path | None,
    max_size: int,
    overview_resampling: str,
    compress: str,
    vector: Path | None,
    classes: str | None,
    min_area: float,
    simplify: float,
    connectivity: str,
    stac: Path | None,
    scheduler: str | None,
    workers: int | None,
    overwrite: bool,
) -> None:
    """Export a label STORE: COG, PNG quicklook, class polygons, STAC Item."""
    from pipeline import export
    from pipeline.outputs import stac as stac_item
    from pipeline.outputs import vector as polygons

    if vector is None and (classes is not None or min_area or simplify or connectivity != "4"):
        raise UserError("--classes, --min-area, --simplify and --connectivity need --vector OUT")
    if cog is None and quicklook is None and vector is None and stac is None:
        raise UserError(
            "nothing to export: pass --cog OUT.tif, --quicklook OUT.png, --vector OUT.gpkg "
            "and/or --stac DIR"
        )
    vector_request = None
    if vector is not None:
        vector_request = polygons.plan_vector(
            store_path, vector, classes=classes, min_area=min_area, simplify=simplify,
            connectivity=int(connectivity), overwrite=overwrite,
        )  # fmt: skip
    if stac is not None:
        stac_item.check_dir(store_path, stac, overwrite)
    if cog is not None and quicklook is not None and cog.absolute() == quicklook.absolute():
        raise UserError(f"--cog and --quicklook are the same file ({cog}); pass two paths")
    if max_size < 1:
        raise UserError(f"--max-size {max_size}: must be at least 1 pixel")
    ls = export.open_store(store_path)
    # Refuse every existing output before writing any, so a refusal writes nothing.
    for path, what in ((cog, "--cog"), (quicklook, "--quicklook")):
        if path is not None:
            if (
                path.absolute() == ls.path.absolute()
                or ls.path.absolute() in path.absolute().parents
            ):
                raise UserError(f"{what} {path} is inside the store; pass a path outside it")
            export.check_output(path, overwrite, what)
    if not ls.attrs.get("complete"):
        log.warning("%s is not complete: unwritten blocks are exported as nodata", ls.path)
    if ls.attrs.get("random_weights"):
        log.warning("%s was made with RANDOM CLIP weights: its labels mean nothing", ls.path)
    if cog is not None:
        export.export_cog(
            ls.path, cog, overwrite=overwrite, resampling=overview_resampling, compress=compress
        )
        log.info("wrote %s", cog)
    if quicklook is not None:
        width, height = export.export_quicklook(ls.path, quicklook, max_size, overwrite=overwrite)
        log.info("wrote %s (%d x %d)", quicklook, width, height)
    if vector_request is not None:
        done = polygons.run_vector(vector_request, scheduler, workers)
        log.info("wrote %s (%d polygons, %d across blocks)", vector, done.features, done.merged)
    if stac is not None:
        item = stac_item.write_item(ls.path, stac, cog=cog, vector=vector, quicklook=quicklook)
        log.info("wrote %s", item)


@click.command("info")
@click.argument("store_path", metavar="STORE", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def info_command(store_path: Path, as_json: bool) -> None:
    """Classes, area per class, parameters, progress and fingerprint of a label STORE."""
    from pipeline.export import store_info

    info = store_info(store_path)
    if as_json:
        click.echo(json.dumps(info, indent=2, allow_nan=False))
        return
    print_info(info)


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def print_info(info: dict[str, Any]) -> None:
    """The summary as rich tables on stdout."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

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
            f" ({_fmt(progress['percent'], 1)}%)"
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
            f"{pixels['valid']:,} px ({_fmt(info['valid_hectares'])} ha), "
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
            _fmt(c["hectares"]),
            _fmt(c["percent"], 1),
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
    from pipeline.export import KEY_HYPERPARAMETERS

    hyper = info["hyperparameters"]
    for key in KEY_HYPERPARAMETERS:
        if key in hyper:
            params.add_row(key, json.dumps(hyper[key]))
    if info["model_gsd"] is not None:
        params.add_row("model gsd", f"{info['model_gsd']:g}")
    console.print(Table.grid())
    console.print("[bold]parameters[/bold] (all of them: --json)")
    console.print(params)
