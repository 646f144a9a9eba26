"""`reattn-batch export STORE`: files for people from a label store (pipeline/outputs/).

Every export is one entry of :data:`EXPORTS`: its flag (``--cog OUT.tif``), its help and
the function that writes it. Adding an export format is a module in pipeline/outputs/ and
one line here; its own options, if any, go in ``Export.options`` (giving one of them
without the export's flag is refused). Exports are written in the order of ``EXPORTS``;
``--stac`` comes last so its Item lists the files written before it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from reattn_batch.cli.options import Decorator, apply, cluster_settings, scheduler_options
from reattn_batch.outputs.vector import CONNECTIVITIES, DEFAULT_CONNECTIVITY
from reattn_batch.workers.errors import UserError

log = logging.getLogger("reattn_batch")


def refuse_existing(ls, path: Path, options: dict[str, Any], flag: str) -> None:
    """The default ``Export.prepare``: a file outside the store and its input scene, new
    unless --overwrite."""
    from reattn_batch.outputs.files import check_export

    check_export(ls, path, options["overwrite"], flag)


@dataclasses.dataclass(frozen=True)
class Export:
    """One export: ``--flag PATH``, ``write(store, path, options) -> what to log``, its own
    options, ``check(options)`` (before the store is opened) and ``prepare(store, path,
    options, flag)`` (after; refuses an existing output), both run before anything is
    written."""

    flag: str
    help: str
    write: Callable[[Any, Path, dict[str, Any]], str]
    options: tuple[Decorator, ...] = ()
    check: Callable[[dict[str, Any]], None] = lambda options: None
    prepare: Callable[[Any, Path, dict[str, Any], str], None] = refuse_existing

    @property
    def key(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")

    def own_params(self) -> list[click.Parameter]:
        """The click parameters of ``options``."""

        def bare() -> None:
            pass

        return list(getattr(apply(list(self.options))(bare), "__click_params__", []))


def write_cog(ls, path: Path, options: dict[str, Any]) -> str:
    from reattn_batch.outputs.cog import export_cog

    export_cog(
        ls,
        path,
        overwrite=options["overwrite"],
        resampling=options["overview_resampling"],
        compress=options["compress"],
    )
    return f"wrote {path}"


def write_quicklook(ls, path: Path, options: dict[str, Any]) -> str:
    from reattn_batch.outputs.quicklook import export_quicklook

    width, height = export_quicklook(ls, path, options["max_size"], overwrite=options["overwrite"])
    return f"wrote {path} ({width} x {height})"


def check_quicklook(options: dict[str, Any]) -> None:
    if options["max_size"] < 1:
        raise UserError(f"--max-size {options['max_size']}: must be at least 1 pixel")


def _vector_request(ls, path: Path, options: dict[str, Any]):
    from reattn_batch.outputs.vector import plan_vector

    return plan_vector(
        ls,
        path,
        classes=options["classes"],
        min_area=options["min_area"],
        simplify=options["simplify"],
        connectivity=int(options["connectivity"]),
        overwrite=options["overwrite"],
    )


def prepare_vector(ls, path: Path, options: dict[str, Any], flag: str) -> None:
    _vector_request(ls, path, options)
    cluster_settings(_cluster_flags(options))


def _cluster_flags(options: dict[str, Any]) -> dict[str, Any]:
    return {k: options[k] for k in ("scheduler", "scheduler_file", "workers")}


def write_vector(ls, path: Path, options: dict[str, Any]) -> str:
    from reattn_batch.outputs.vector import run_vector

    done = run_vector(_vector_request(ls, path, options), cluster_settings(_cluster_flags(options)))
    return f"wrote {path} ({done.features} polygons, {done.merged} across blocks)"


def prepare_stac(ls, path: Path, options: dict[str, Any], flag: str) -> None:
    from reattn_batch.outputs.stac import check_dir

    check_dir(ls, path, options["overwrite"])


def write_stac(ls, path: Path, options: dict[str, Any]) -> str:
    from reattn_batch.outputs.stac import write_item

    item = write_item(
        ls, path, cog=options["cog"], vector=options["vector"], quicklook=options["quicklook"]
    )
    return f"wrote {item}"


EXPORTS: tuple[Export, ...] = (
    Export(
        "--cog",
        "Write a Cloud-Optimised GeoTIFF (palette, mode overviews, the store's CRS).",
        write_cog,
        options=(
            click.option(
                "--overview-resampling",
                type=click.Choice(["mode", "nearest"]),
                default="mode",
                show_default=True,
                help="How the COG's overviews are computed.",
            ),
            click.option(
                "--compress",
                type=click.Choice(["deflate", "zstd"]),
                default="deflate",
                show_default=True,
                help="COG compression (ZSTD needs GDAL >= 2.3 to read).",
            ),
        ),
    ),
    Export(
        "--quicklook",
        "Write a PNG colour map with a legend.",
        write_quicklook,
        options=(
            click.option(
                "--max-size",
                type=int,
                default=1024,
                show_default=True,
                help="Long side of the quicklook's map in pixels.",
            ),
        ),
        check=check_quicklook,
    ),
    Export(
        "--vector",
        "Write class polygons merged across blocks: .gpkg, .fgb or .parquet (GeoParquet), "
        "by extension.",
        write_vector,
        options=(
            click.option(
                "--classes",
                help="Classes to polygonize, comma-separated (default: all but background).",
            ),
            click.option(
                "--min-area",
                type=float,
                default=0.0,
                help="Drop polygons smaller than this (CRS units squared).",
            ),
            click.option(
                "--simplify",
                type=float,
                default=0.0,
                help="Topology-preserving simplification tolerance (CRS units).",
            ),
            click.option(
                "--connectivity",
                type=click.Choice([str(c) for c in CONNECTIVITIES]),
                default=str(DEFAULT_CONNECTIVITY),
                show_default=True,
                help="Pixel connectivity of a region.",
            ),
            scheduler_options,
            click.option(
                "--workers",
                type=int,
                help="LocalCluster workers for --vector (default: one per core).",
            ),
        ),
        prepare=prepare_vector,
    ),
    Export(
        "--stac",
        "Write a STAC Item for the store (and the files of this command) into this folder.",
        write_stac,
        prepare=prepare_stac,
    ),
)


def export_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The --FLAG PATH option of every export, then every export's own options."""
    flags = [
        click.option(e.flag, e.key, type=click.Path(path_type=Path), help=e.help) for e in EXPORTS
    ]
    return apply([*flags, *(o for e in EXPORTS for o in e.options)])(command)


@click.command("export")
@click.argument("store_path", metavar="STORE", type=click.Path(path_type=Path))
@export_options
@click.option("--overwrite", is_flag=True, help="Replace existing output files.")
def export_command(store_path: Path, **options: Any) -> None:
    """Export a label STORE: COG, quicklook, class polygons, STAC Item."""
    from reattn_batch.store import open_for_reading, warn_unfinished

    wanted = [(e, options[e.key]) for e in EXPORTS if options[e.key] is not None]
    context = click.get_current_context()
    for export in EXPORTS:
        if options[export.key] is None:
            for param in export.own_params():
                if context.get_parameter_source(param.name) == ParameterSource.COMMANDLINE:
                    raise UserError(
                        f"{param.opts[0]} needs {export.flag} {export.key.upper()}; "
                        f"pass {export.flag} or drop {param.opts[0]}"
                    )
    if not wanted:
        flags = " and/or ".join(f"{e.flag} {e.key.upper()}" for e in EXPORTS)
        raise UserError(f"nothing to export: pass {flags}")
    seen: dict[Path, str] = {}
    for export, path in wanted:
        if path.absolute() in seen:
            raise UserError(
                f"{seen[path.absolute()]} and {export.flag} are the same file ({path}); "
                "pass two paths"
            )
        seen[path.absolute()] = export.flag
        export.check(options)
    # A run writing the store refuses the export; while it copies, a run starting is refused.
    with open_for_reading(store_path, refuse_busy=True) as ls:
        # Refuse every existing output before writing any, so a refusal writes nothing.
        for export, path in wanted:
            export.prepare(ls, path, options, export.flag)
        warn_unfinished(ls)  # its unwritten pixels are exported as 255 (nodata)
        if ls.attrs.get("random_weights"):
            log.warning("%s was made with RANDOM CLIP weights: its labels mean nothing", ls.path)
        for export, path in wanted:
            log.info("%s", export.write(ls, path, options))
