"""The `reattn-batch` command line.

Every command shares the model flags (``model_options``); a UserError anywhere
becomes one line on stderr and exit status 2 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from workers.errors import UserError

log = logging.getLogger("reattn_batch")


def model_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The flags that choose the model, shared by segment, run and eval."""
    options = [
        click.option(
            "--classes",
            help='Classes, comma-separated; synonyms joined by "/" ("road/parking lot,building").',
        ),
        click.option(
            "--classes-file",
            type=click.Path(path_type=Path),
            help="SegEarth-OV class file: a class a line, synonyms comma-separated.",
        ),
        click.option("--no-background", is_flag=True, help='Do not prepend a "background" class.'),
        click.option(
            "--method",
            type=click.Choice(
                ["vanilla", "maskclip", "sclip", "clearclip", "segearth-ov", "reattnclip"]
            ),
            help="Final-block attention method (config key 'method').",
        ),
        click.option(
            "--clip-weights",
            default="openai",
            show_default=True,
            help="openai | PATH (ViT-B-16.pt or a state dict) | random (tests only).",
        ),
        click.option(
            "--upsampler",
            type=click.Choice(["jbu_one", "jbu_stack", "bilinear"]),
            default="jbu_one",
            show_default=True,
            help="Feature upsampler.",
        ),
        click.option(
            "--upsampler-weights",
            type=click.Path(path_type=Path),
            help="Upsampler checkpoint (default for jbu_one: SegEarth-OV's released file, cached).",
        ),
        click.option(
            "--prob-thd",
            type=float,
            help="Pixels whose max class probability is below this get the background class.",
        ),
        click.option(
            "--config",
            "config_file",
            type=click.Path(path_type=Path),
            help="YAML overriding configs/method.yaml.",
        ),
        click.option(
            "--set",
            "sets",
            multiple=True,
            metavar="KEY=VALUE",
            help="Override one config key (repeatable).",
        ),
        click.option(
            "--device",
            type=click.Choice(["auto", "cpu", "cuda"]),
            default="auto",
            show_default=True,
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def build_model_spec(model: dict[str, Any]):
    """The ModelSpec of the ``model_options`` values (``model``: their keyword dict)."""
    from workers.config import load_config
    from workers.model_spec import ModelSpec

    overrides = {"method": model["method"], "prob_thd": model["prob_thd"]}
    cfg = load_config(model["config_file"], model["sets"], overrides=overrides)
    weights = model["upsampler_weights"]
    return ModelSpec(
        clip_weights=model["clip_weights"],
        upsampler=model["upsampler"],
        upsampler_weights=str(weights) if weights else None,
        cfg=cfg,
        device=model["device"],
    )


def build_classes(model: dict[str, Any], prob_thd: float):
    """The final class list of the ``model_options`` values; prob_thd needs a background."""
    from workers.classes import parse_classes

    add_background = not model["no_background"]
    class_list = parse_classes(model["classes"], model["classes_file"], add_background)
    if prob_thd > 0 and class_list.background_index is None:
        raise UserError(
            f"prob_thd {prob_thd} needs a background class, and --no-background left none: "
            "drop --no-background, name a class 'background', or pass --prob-thd 0"
        )
    return class_list


def parse_resize(resize: str) -> int | None:
    """--resize: a long side in px, or None for 'none'."""
    if resize == "none":
        return None
    if not (resize.isdigit() and int(resize) > 0):
        raise UserError(f"--resize {resize!r}: pass a long side in pixels (e.g. 448) or 'none'")
    return int(resize)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.option("-v", "--verbose", is_flag=True, help="Log more.")
@click.version_option(package_name="reattn-batch")
@click.pass_context
def cli(ctx: click.Context, debug: bool, verbose: bool) -> None:
    """Training-free open-vocabulary mapping of remote-sensing imagery with ReAttnCLIP."""
    ctx.obj = {"debug": debug}
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    if not verbose:  # Dask's own chatter only with -v (read when distributed is imported)
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")


@cli.command()
@click.argument("image", type=click.Path(path_type=Path))
@model_options
@click.option(
    "--resize",
    default="448",
    show_default=True,
    help="Long side in px before inference (mmcv imrescale), or 'none'.",
)
@click.option(
    "-o", "--output", type=click.Path(path_type=Path), help="uint8 label PNG at the input size."
)
@click.option(
    "--save-logits",
    type=click.Path(path_type=Path),
    help="float32 .npy (Q, H, W): mean raw crop logits at the input size.",
)
def segment(
    image: Path, resize: str, output: Path | None, save_logits: Path | None, **model: Any
) -> None:
    """Segment one image (PNG, JPEG, TIFF) into the given classes."""
    from pipeline.segment_image import segment_file

    long_side = parse_resize(resize)
    spec = build_model_spec(model)
    classes = build_classes(model, spec.cfg.prob_thd)
    if output is None and save_logits is None:
        raise UserError("nothing to write: pass -o PRED.png and/or --save-logits LOGITS.npy")
    result = segment_file(image, spec, classes, long_side)
    if save_logits is not None:
        import numpy as np

        np.save(save_logits, result.logits)
        log.info("wrote logits %s %s", save_logits, result.logits.shape)
    if output is not None:
        from pipeline.image_io import write_label_png

        write_label_png(output, result.labels)
        log.info("wrote labels %s", output)


def _int_list(option: str, text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise UserError(
            f"{option} {text!r}: expected comma-separated band numbers, e.g. 3,2,1"
        ) from None


def _stretch(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"--stretch {text!r}: expected LO,HI, e.g. --stretch 0,3000") from None
    if not hi > lo:
        raise UserError(f"--stretch {text!r}: HI must be greater than LO")
    return lo, hi


@cli.command()
@click.argument("scene")
@model_options
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="Output store (default: <scene stem>.labels.zarr here).",
)
@click.option(
    "--gsd", type=float, help="Model resolution in CRS units per pixel (default: the scene's own)."
)
@click.option(
    "--block-size",
    type=int,
    default=2048,
    show_default=True,
    help="Output block in px (multiple of 512).",
)
@click.option("--bands", help="Source bands used as R,G,B (1-based), e.g. 3,2,1.")
@click.option(
    "--stretch",
    help="LO,HI to map non-uint8 data to 0..255 (default: scene-wide 2-98 percentiles).",
)
@click.option("--variable", help="Array of a Zarr scene holding (band, y, x).")
@click.option("--workers", type=int, help="LocalCluster workers (default: one per GPU, else 1).")
@click.option("--threads-per-worker", type=int, help="LocalCluster threads per worker (default 1).")
@click.option("--scheduler", help="Address of an existing Dask scheduler, e.g. tcp://host:8786.")
@click.option(
    "--scheduler-file",
    type=click.Path(path_type=Path),
    help="Scheduler file of an existing cluster.",
)
@click.option(
    "--save-confidence", is_flag=True, help="Also write `confidence` (max class probability x 254)."
)
@click.option("--overwrite", is_flag=True, help="Replace an existing output store.")
@click.option(
    "--resume",
    is_flag=True,
    help="Finish an existing store of the same run, redoing only unfinished blocks.",
)
def run(
    scene: str,
    out: Path | None,
    gsd: float | None,
    block_size: int,
    bands: str | None,
    stretch: str | None,
    variable: str | None,
    workers: int | None,
    threads_per_worker: int | None,
    scheduler: str | None,
    scheduler_file: Path | None,
    save_confidence: bool,
    overwrite: bool,
    resume: bool,
    **model: Any,
) -> None:
    """Map a whole scene (GeoTIFF/COG/Zarr, local or remote) into a label Zarr store."""
    from pipeline.cluster import ClusterRequest
    from pipeline.job import RunRequest, default_out, run_scene

    if overwrite and resume:
        raise UserError("pass --overwrite (start again) or --resume (finish), not both")
    spec = build_model_spec(model)
    classes = build_classes(model, spec.cfg.prob_thd)
    request = RunRequest(
        scene=scene,
        model=spec,
        classes=classes,
        out=out or default_out(scene),
        gsd=gsd,
        block_size=block_size,
        bands=_int_list("--bands", bands),
        stretch=_stretch(stretch),
        variable=variable,
        cluster=ClusterRequest(scheduler, scheduler_file, workers, threads_per_worker),
        save_confidence=save_confidence,
        overwrite=overwrite,
        resume=resume,
    )
    summary = run_scene(request)
    log.info(
        "done: %s (%d blocks, %d computed, %d already done, %d crops, %.3g MP/s)",
        summary.out, summary.blocks, summary.computed, summary.skipped, summary.crops,
        summary.megapixels_per_second,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    """Console entry point: UserError -> one line on stderr, exit status 2."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        cli.main(args=argv, prog_name="reattn-batch", standalone_mode=False)
    except UserError as exc:
        if debug:
            raise
        click.echo(f"reattn-batch: error: {exc}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("reattn-batch: aborted", err=True)
        sys.exit(130)
    except click.UsageError as exc:  # unknown option, bad choice...: one line, not a usage dump
        hint = (
            f" (see `reattn-batch {exc.ctx.command_path.split(' ', 1)[-1]} --help`)"
            if exc.ctx
            else ""
        )
        click.echo(f"reattn-batch: error: {exc.format_message()}{hint}", err=True)
        sys.exit(2)
    except click.ClickException as exc:
        click.echo(f"reattn-batch: error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)


def _register_commands() -> None:
    """Commands defined in their own modules (they import the shared options above)."""
    from pipeline.cli_eval import eval_command
    from pipeline.cli_job import job_group
    from pipeline.cli_outputs import export_command, info_command
    from pipeline.viewer.command import view_command

    cli.add_command(eval_command)
    cli.add_command(export_command)
    cli.add_command(info_command)
    cli.add_command(job_group)
    cli.add_command(view_command)


_register_commands()
