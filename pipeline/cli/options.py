"""The options commands share, with their defaults and choices from the settings schema
(``reattn_batch.settings``), and the helpers that turn their values into run settings.

``model_options`` adds the model and class flags (segment, run, eval); a command receives
them as keyword arguments and hands that dict to ``build_model_spec``/``build_classes``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from reattn_batch.settings import (
    HALO_TARGET,
    MODEL_KEYS,
    ClusterSettings,
    ModelSettings,
    SceneSettings,
    from_keywords,
    option_choices,
    option_default,
    require_background,
)
from reattn_batch.store.layout import CHUNK
from reattn_batch.workers.errors import UserError

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


#: The key of the root context's ``obj`` that says whether the command line owns its
#: process (`reattn-batch` itself, not ``main([...])`` called in another program).
OWNS = "owns_process"


def owns_process() -> bool:
    """True when the running command is the `reattn-batch` process itself, which exits as
    the command ends (so a stopped run may leave the stop signals ignored until then)."""
    ctx = click.get_current_context(silent=True)
    return bool(ctx is not None and (ctx.find_root().obj or {}).get(OWNS))


def apply(options: list[Decorator]) -> Decorator:
    """One decorator applying ``options`` in the order listed (top to bottom in --help)."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


model_options = apply(
    [
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
            type=click.Choice(option_choices(ModelSettings, "method")),
            help="Final-block attention method (config key 'method').",
        ),
        click.option(
            "--clip-weights",
            default=option_default(ModelSettings, "clip_weights"),
            show_default=True,
            help="openai | PATH (ViT-B-16.pt or a state dict) | random (tests only).",
        ),
        click.option(
            "--upsampler",
            type=click.Choice(option_choices(ModelSettings, "upsampler")),
            default=option_default(ModelSettings, "upsampler"),
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
            type=click.Choice(option_choices(ModelSettings, "device")),
            default=option_default(ModelSettings, "device"),
            show_default=True,
        ),
    ]
)

report_option = click.option(
    "--report",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write a JSON report: seconds (load, text, model, write, total), crops run, "
    "device, dtype, batch size.",
)

scene_options = apply(
    [
        click.option(
            "--gsd",
            type=float,
            help="Model resolution in CRS units per pixel (default: the scene's own).",
        ),
        click.option(
            "--block-size",
            default=option_default(SceneSettings, "block_size"),
            show_default=True,
            help=f"Output block in px (multiple of {CHUNK}), or auto: the smallest whose "
            f"halo redundancy is <= {HALO_TARGET:.0%} within worker memory.",
        ),
        click.option("--bands", help="Source bands used as R,G,B (1-based), e.g. 3,2,1."),
        click.option(
            "--stretch",
            help="LO,HI to map non-uint8 data to 0..255 (default: scene-wide 2-98 percentiles).",
        ),
        click.option("--variable", help="Array of a Zarr scene holding (band, y, x)."),
        click.option(
            "--asset",
            help="Asset of a STAC Item SCENE to read (default: its RGB/visual asset).",
        ),
        click.option(
            "--save-confidence",
            is_flag=True,
            help="Also write `confidence` (max class probability x 254).",
        ),
    ]
)

scheduler_options = apply(
    [
        click.option(
            "--scheduler", help="Address of an existing Dask scheduler, e.g. tcp://host:8786."
        ),
        click.option(
            "--scheduler-file",
            type=click.Path(path_type=Path),
            help="Scheduler file of an existing cluster.",
        ),
    ]
)

local_cluster_options = apply(
    [
        click.option(
            "--workers", type=int, help="LocalCluster workers (default: one per GPU, else 1)."
        ),
        click.option(
            "--threads-per-worker", type=int, help="LocalCluster threads per worker (default 1)."
        ),
    ]
)

resize_option = click.option(
    "--resize",
    default="448",
    show_default=True,
    help="Long side in px before inference (mmcv imrescale), or 'none'.",
)


def take(values: dict[str, Any], keys) -> dict[str, Any]:
    """Remove ``keys`` from a command's keyword arguments and return them."""
    return {key: values.pop(key) for key in list(keys) if key in values}


def build_model_spec(model: dict[str, Any]):
    """The ModelSpec of the ``model_options`` values (``model``: their keyword dict)."""
    flags = {key: model[key] for key in MODEL_KEYS} | {"config": model["config_file"]}
    return from_keywords(ModelSettings, flags).model_spec(model["sets"])


def build_classes(model: dict[str, Any], prob_thd: float):
    """The final class list of the ``model_options`` values; prob_thd needs a background."""
    from reattn_batch.workers.classes import parse_classes

    add_background = not model["no_background"]
    class_list = parse_classes(model["classes"], model["classes_file"], add_background)
    fix = "drop --no-background, name a class 'background', or pass --prob-thd 0"
    require_background(class_list, prob_thd, fix)
    return class_list


def scene_settings(values: dict[str, Any]) -> SceneSettings:
    """``scene_options`` values -> SceneSettings; errors name the keyword (main words it as
    the flag)."""
    return from_keywords(SceneSettings, values)


def cluster_settings(values: dict[str, Any]) -> ClusterSettings:
    """``scheduler_options`` (and ``local_cluster_options``) values -> ClusterSettings."""
    return from_keywords(ClusterSettings, values)


def parse_resize(resize: str) -> int | None:
    """--resize: a long side in px, or None for 'none'."""
    if resize == "none":
        return None
    if not (resize.isdigit() and int(resize) > 0):
        raise UserError(f"--resize {resize!r}: pass a long side in pixels (e.g. 448) or 'none'")
    return int(resize)
