"""`reattn-batch export STORE`: files for people from a label store (pipeline/outputs/).

Every export is one entry of :data:`EXPORTS`: its flag (``--cog OUT.tif``), its help and
the function that writes it. Adding an export format is a module in pipeline/outputs/ and
one line here; its own options, if any, go in ``Export.options``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from pipeline.cli.options import Decorator, apply
from workers.errors import UserError

log = logging.getLogger("reattn_batch")


@dataclasses.dataclass(frozen=True)
class Export:
    """One export: ``--flag PATH``, ``write(store, path, options) -> what to log``, its own
    options, and ``check(options)``, run before anything is written."""

    flag: str
    help: str
    write: Callable[[Any, Path, dict[str, Any]], str]
    options: tuple[Decorator, ...] = ()
    check: Callable[[dict[str, Any]], None] = lambda options: None

    @property
    def key(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")


def write_cog(ls, path: Path, options: dict[str, Any]) -> str:
    from pipeline.outputs.cog import export_cog

    export_cog(
        ls.path,
        path,
        overwrite=options["overwrite"],
        resampling=options["overview_resampling"],
        compress=options["compress"],
    )
    return f"wrote {path}"


def write_quicklook(ls, path: Path, options: dict[str, Any]) -> str:
    from pipeline.outputs.quicklook import export_quicklook

    width, height = export_quicklook(
        ls.path, path, options["max_size"], overwrite=options["overwrite"]
    )
    return f"wrote {path} ({width} x {height})"


def check_quicklook(options: dict[str, Any]) -> None:
    if options["max_size"] < 1:
        raise UserError(f"--max-size {options['max_size']}: must be at least 1 pixel")


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
    """Export a label STORE as files for people (COG, quicklook, ...)."""
    from pipeline.outputs.files import check_output
    from pipeline.store import open_store

    wanted = [(e, options[e.key]) for e in EXPORTS if options[e.key] is not None]
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
    ls = open_store(store_path)
    # Refuse every existing output before writing any, so a refusal writes nothing.
    for export, path in wanted:
        if path.absolute() == ls.path.absolute() or ls.path.absolute() in path.absolute().parents:
            raise UserError(f"{export.flag} {path} is inside the store; pass a path outside it")
        check_output(path, options["overwrite"], export.flag)
    if not ls.attrs.get("complete"):
        log.warning("%s is not complete: unwritten blocks are exported as nodata", ls.path)
    if ls.attrs.get("random_weights"):
        log.warning("%s was made with RANDOM CLIP weights: its labels mean nothing", ls.path)
    for export, path in wanted:
        log.info("%s", export.write(ls, path, options))
