"""Run settings: ONE schema for the command line, job spec files and the run fingerprint.

Every default and every allowed value of a run setting is defined here once (the
``method`` and ``prob_thd`` types come from ``workers.config``, whose MethodConfig owns
them, and the upsampler list from ``workers.upsampler``); the models share their base with
the method configuration and the environment (``workers.schema``, ``workers.environment``).
The CLI takes its option defaults and choices from these models, job spec files validate
their ``model:``, ``run:`` and ``cluster:`` sections with them, and the run fingerprint
hashes :data:`FINGERPRINTED` fields of :class:`SceneSettings`.

Errors (``settings_error``) name the key and where it came from: the Python keyword
(`` `block_size` ``, which the CLI words as ``--block-size``) or the file and dotted key
(``job spec F: 'run.block_size'``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import (
    BaseModel,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    field_validator,
)

from reattn_batch.store.layout import CHUNK
from reattn_batch.workers.config import Method, Probability
from reattn_batch.workers.describe import SHOWN_CHARS
from reattn_batch.workers.errors import InputError
from reattn_batch.workers.schema import Settings
from reattn_batch.workers.upsampler import UPSAMPLER_KINDS

#: ``--block-size auto``: the smallest chunk multiple whose halo redundancy is at most
#: HALO_TARGET for the scene and model grid, within the memory guard (pipeline/grid/block_size.py).
AUTO_BLOCK = "auto"
#: Default output block edge: ``auto``, or a number of native pixels (a multiple of the chunk).
DEFAULT_BLOCK_SIZE = AUTO_BLOCK
#: The halo redundancy ``auto`` keeps the block under (0.10: at most 10 % extra crop runs).
HALO_TARGET = 0.10
DEVICES = ("auto", "cpu", "cuda")
#: Seconds a run waits while no Dask worker can run its tasks before it ends with one line
#: (zero workers, or none with the GPU resource the tasks request): suits an interactive
#: run; batch jobs on adaptive clusters that scale from zero may want more.
DEFAULT_NO_WORKER_TIMEOUT = 300.0
#: Bounds of the resampling factor native GSD / model GSD (``--gsd``): beyond them the model
#: grid is absurd (a 1 x 1 grid, or 1e11 pixels) rather than a resolution choice.
GSD_FACTOR_BOUNDS = (1 / 64, 64.0)
CLIP_WEIGHT_NAMES = ("openai", "random")  # besides a file path


def comma_list(value: Any) -> Any:
    """ "3,2,1" -> ["3", "2", "1"] (a flag or a YAML string); lists pass through."""
    if isinstance(value, str):
        return [v.strip() for v in value.split(",")]
    return value


class ModelSettings(Settings):
    """Which model: the ``model:`` section of a job spec, the model flags of the CLI."""

    method: Method | None = None  # None: configs/method.yaml's
    clip_weights: str = Field("openai", min_length=1)  # openai | random | a file path
    upsampler: Literal[UPSAMPLER_KINDS] = "jbu_one"
    upsampler_weights: Path | None = None
    prob_thd: Probability | None = None  # None: configs/method.yaml's
    device: Literal[DEVICES] = "auto"
    #: method.yaml overrides: a YAML file, or (job specs) a mapping of config keys.
    config: Path | dict[str, Any] | None = None

    def model_spec(self, sets: Sequence[str] = (), keys: dict[str, Any] | None = None):
        """The workers' ModelSpec: method.yaml, then ``config``, method.yaml ``keys``
        (the Python API's keywords), method/prob_thd, ``sets``."""
        from reattn_batch.workers.config import load_config
        from reattn_batch.workers.model_spec import ModelSpec

        overrides = dict(self.config) if isinstance(self.config, dict) else {}
        overrides |= keys or {}
        overrides |= {"method": self.method, "prob_thd": self.prob_thd}
        config_file = self.config if isinstance(self.config, Path) else None
        cfg = load_config(config_file, sets, overrides=overrides)
        return ModelSpec(
            clip_weights=self.clip_weights,
            upsampler=self.upsampler,
            upsampler_weights=str(self.upsampler_weights) if self.upsampler_weights else None,
            cfg=cfg,
            device=self.device,
        )


#: The model settings a command's flags or the Python API's keywords give one by one
#: (every ModelSettings field but ``config``, which is a file or a mapping of keys).
MODEL_KEYS = tuple(k for k in ModelSettings.model_fields if k != "config")


class SceneSettings(Settings):
    """How a scene is mapped: the ``run:`` section of a job spec, the `run` flags."""

    gsd: float | None = Field(None, gt=0.0, allow_inf_nan=False)  # CRS units (None: native)
    block_size: Literal[AUTO_BLOCK] | StrictInt = DEFAULT_BLOCK_SIZE
    bands: tuple[StrictInt, ...] | None = None  # 1-based source bands used as R, G, B
    stretch: tuple[float, float] | None = None  # LO, HI to 0..255 for non-uint8 data
    variable: str | None = None  # the (band, y, x) array of a Zarr scene
    asset: str | None = Field(None, min_length=1)  # a STAC Item scene's asset (None: RGB/visual)
    save_confidence: StrictBool = False
    #: seconds without any worker able to run the tasks before the run ends (not fingerprinted)
    no_worker_timeout: float = Field(DEFAULT_NO_WORKER_TIMEOUT, gt=0.0, allow_inf_nan=False)

    @field_validator("bands", mode="before")
    @classmethod
    def _band_numbers(cls, value: Any) -> Any:
        """ "3,2,1" (a flag, a YAML string) -> [3, 2, 1]; a list passes through."""
        value = comma_list(value)
        if isinstance(value, list):
            return [int(v) if isinstance(v, str) and v.lstrip("-").isdigit() else v for v in value]
        return value

    _split_stretch = field_validator("stretch", mode="before")(comma_list)

    @field_validator("block_size", mode="before")
    @classmethod
    def _block_size_text(cls, value: Any) -> Any:
        """ "2048" (a flag) -> 2048; "auto" and numbers pass through."""
        if isinstance(value, str) and value.strip().isdigit():
            return int(value)
        return value

    @field_validator("block_size")
    @classmethod
    def _block_size(cls, value: int | str) -> int | str:
        if value != AUTO_BLOCK and (value <= 0 or value % CHUNK):
            raise ValueError(f"must be {AUTO_BLOCK!r} or a positive multiple of {CHUNK}")
        return value

    @field_validator("bands")
    @classmethod
    def _bands(cls, value: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if value is not None and (len(value) not in (1, 3) or min(value) < 1):
            raise ValueError("give 3 bands (R,G,B) or 1 (grey), 1-based, e.g. 3,2,1")
        return value

    @field_validator("stretch")
    @classmethod
    def _stretch(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None:
            lo, hi = value
            if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
                raise ValueError("needs finite LO < HI, e.g. 0,3000")
        return value


#: SceneSettings fields that decide the labels (the rest do not enter the fingerprint).
#: Not block_size: labels are identical for any block size; a resumed run takes the
#: block size recorded in its store (its completion records are per block).
FINGERPRINTED = ("bands", "stretch", "variable")


class ClusterSettings(Settings):
    """Where it runs: an existing scheduler, else an embedded LocalCluster."""

    scheduler: str | None = None
    scheduler_file: Path | None = None
    workers: StrictInt | None = Field(None, ge=1)  # LocalCluster (default: one per GPU, else 1)
    threads_per_worker: StrictInt | None = Field(None, ge=1)


def settings_error(
    exc: ValidationError, name: Callable[[tuple], str], root: type[BaseModel] | None = None
) -> InputError:
    """The first error of ``exc`` as one line; ``name(loc)`` says where the key came from;
    with the ``root`` model, an unknown key's message lists the known keys there."""
    first = exc.errors()[0]
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        known = _known_keys(root, first["loc"][:-1]) if root else []
        msg = "unknown key" + (f"; known keys here: {', '.join(known)}" if known else "")
    elif first["type"] == "missing":
        msg = "is required"
    loc = tuple(part for part in first["loc"] if not isinstance(part, int))
    value = repr(first.get("input"))
    if len(value) > SHOWN_CHARS:  # a value from a file may be huge (a geometry)
        value = value[: SHOWN_CHARS - 3] + "..."
    shown = "" if first["type"] in ("extra_forbidden", "missing") else f" (got {value})"
    return InputError(f"{name(loc)}: {msg}{shown}")


def _known_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """The field names (aliases where set) of the settings model reached by ``loc``."""
    for part in loc:
        field = model.model_fields.get(part) or next(
            (f for f in model.model_fields.values() if f.alias == part), None
        )
        if field is None:
            return []
        candidates = (field.annotation, *get_args(field.annotation))
        nested = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if not nested:
            return []
        model = nested[0]
    return [f.alias or n for n, f in model.model_fields.items()]


def keyword_name(loc: tuple) -> str:
    """A settings key as the Python API's keyword: ('block_size',) -> `block_size`."""
    return f"`{loc[-1]}`" if loc else "settings"


def from_keywords(model: type[Settings], values: dict[str, Any]) -> Any:
    """Validate Python keyword values (None: not given) into ``model``; errors
    (InputError) name the keyword."""
    given = {k: v for k, v in values.items() if v is not None}
    try:
        return model(**given)
    except ValidationError as exc:
        raise settings_error(exc, keyword_name) from None


def option_default(model: type[Settings], key: str) -> Any:
    """The default of ``key`` (for the CLI's --help)."""
    return model.model_fields[key].default


def option_choices(model: type[Settings], key: str) -> list[str]:
    """The allowed values of a Literal field ``key`` (Optional, Annotated or not), for the CLI."""

    def literal_in(annotation: Any) -> Any:
        if get_origin(annotation) is Literal:
            return annotation
        return next((x for a in get_args(annotation) if (x := literal_in(a))), None)

    return [str(v) for v in get_args(literal_in(model.model_fields[key].annotation))]


def require_background(classes, prob_thd: float, fix: str) -> None:
    """prob_thd > 0 sends uncertain pixels to the background class, so there must be one."""
    if prob_thd > 0 and classes.background_index is None:
        raise InputError(f"prob_thd {prob_thd} needs a background class and none is left: {fix}")
