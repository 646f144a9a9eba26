"""Method configuration: configs/method.yaml, validated at load by :class:`MethodConfig`.

The YAML file is the single source of defaults; :class:`MethodConfig`, a pydantic model of
the settings family (:mod:`reattn_batch.workers.schema`), is the single definition of each
key's type and allowed values (the constants below, which the run settings reuse for
``--method`` and ``--prob-thd``). A user's ``--config FILE`` may override any subset of the
keys and ``--set key=value`` any single key; every error names the offending key and where
its value came from.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BeforeValidator,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from reattn_batch.configs import CONFIG_DIR
from reattn_batch.workers import methods
from reattn_batch.workers.backbone import CLIP_MODEL_RULE, allowed_clip_models
from reattn_batch.workers.errors import ModelError
from reattn_batch.workers.schema import Settings, first_problem

DEFAULTS_FILE = CONFIG_DIR / "method.yaml"

# --- every allowed value, defined once (the run settings reuse these) ---------------
#: The final-block attention methods (SPEC 2.2); ``method`` of method.yaml, ``--method``:
#: the names of the method registry (reattn_batch.workers.methods).
METHODS = tuple(methods.METHODS)
#: The methods ReAttnCLIP's A_refine may start from (``base``).
BASES = methods.REATTN_BASES
ABLATION_SOURCES = ("base", "reattn")  # patch_patch, cls_row
CLS_COLUMNS = ("keep", "zero")
XX_NORMS = ("ln1", "none", "l2")
XX_SCALES = ("width",)
DTYPES = ("auto", "fp32", "fp16", "bf16")
UPSAMPLER_PATHS = ("rank_reduced", "full")  # workers/upsampled_logits.py
ROTATIONS = (0, 90, 180, 270)
#: The blocks whose streams and attention maps may be used (block 12 is the one replaced).
FIRST_BLOCK, LAST_BLOCK = 1, 11
AUTO = "auto"
AUTO_BATCH = (
    0  # how `batch_size: auto` is held: resolved per device by reattn_batch.workers.batching
)


# --- value types: each refuses a wrong value with a message naming what it expects ---------
# (the message need not show the value: build_config adds where it came from and ", got V")
def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a string")
    return value


def _integer(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("expected an integer")
    return value


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("expected a number")
    return float(value)


def _one_of(options: tuple[str, ...]) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if _string(value) not in options:
            raise ValueError("expected one of " + ", ".join(options))
        return value

    return check


def _list_of(cast: type, optional: bool = False) -> Callable[[Any], tuple | None]:
    """A YAML list -> a tuple of ``cast`` (int: whole numbers only, never booleans)."""

    def check(value: Any) -> tuple | None:
        if value is None and optional:
            return None
        if not isinstance(value, Sequence) or isinstance(value, str):
            raise ValueError("expected a list")
        if any(isinstance(v, bool) or not isinstance(v, int | float) for v in value) or (
            cast is int and not all(float(v).is_integer() for v in value)
        ):
            raise ValueError(f"expected a list of {cast.__name__}s")
        return tuple(cast(v) for v in value)

    return check


def _batch_size(value: Any) -> int:
    if value == AUTO:
        return AUTO_BATCH
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"expected a positive integer or {AUTO!r}")
    return value


def _unit_interval(value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise ValueError("must lie in [0, 1]")
    return value


def _positive(value: float) -> float:
    if not value > 0:
        raise ValueError("must be positive")
    return value


def _rotations(value: tuple[int, ...]) -> tuple[int, ...]:
    if not value or any(r not in ROTATIONS for r in value):
        raise ValueError(f"must be a non-empty subset of {list(ROTATIONS)}")
    if len(set(value)) != len(value):
        raise ValueError("lists a rotation twice")
    return value


def _blocks(value: tuple[int, ...]) -> tuple[int, ...]:
    if not value or any(not FIRST_BLOCK <= k <= LAST_BLOCK for k in value):
        raise ValueError(
            f"must be a non-empty list of blocks in {FIRST_BLOCK}..{LAST_BLOCK} "
            f"(block {LAST_BLOCK + 1} is the one replaced)"
        )
    return value


def _crop(value: int) -> int:
    if value < 16 or value % 16:
        raise ValueError("must be a positive multiple of 16")
    return value


def _clip_model(value: str) -> str:
    if value not in allowed_clip_models():  # open_clip's registry, plus configs/models
        raise ValueError(f"{value!r} is not allowed; {CLIP_MODEL_RULE}")
    return value


def Choice(options: tuple[str, ...]) -> Any:  # noqa: N802 - used as a type
    """A string among ``options`` (a Literal, so the CLI can list them)."""
    return Annotated[Literal[options], BeforeValidator(_one_of(options))]


Integer = Annotated[int, BeforeValidator(_integer)]
Number = Annotated[float, BeforeValidator(_number)]
Positive = Annotated[float, BeforeValidator(_number), AfterValidator(_positive)]
#: A number in [0, 1] (a weight, a probability).
UnitInterval = Annotated[float, BeforeValidator(_number), AfterValidator(_unit_interval)]
ClipModel = Annotated[str, BeforeValidator(_string), AfterValidator(_clip_model)]
Rotations = Annotated[tuple[int, ...], BeforeValidator(_list_of(int)), AfterValidator(_rotations)]
Blocks = Annotated[tuple[int, ...], BeforeValidator(_list_of(int)), AfterValidator(_blocks)]
Weights = Annotated[tuple[float, ...], BeforeValidator(_list_of(float))]
OptionalWeights = Annotated[tuple[float, ...] | None, BeforeValidator(_list_of(float, True))]
Crop = Annotated[int, BeforeValidator(_integer), AfterValidator(_crop)]
BatchSize = Annotated[int, BeforeValidator(_batch_size)]
#: The types the run settings reuse for ``--method`` and ``--prob-thd``.
Method = Choice(METHODS)
Probability = UnitInterval
Base = Choice(BASES)
AblationSource = Choice(ABLATION_SOURCES)
ClsColumn = Choice(CLS_COLUMNS)
XXNorm = Choice(XX_NORMS)
XXScale = Choice(XX_SCALES)
Dtype = Choice(DTYPES)
UpsamplerPath = Choice(UPSAMPLER_PATHS)


class MethodConfig(Settings):
    """Every hyperparameter of the model and of crop inference (see configs/method.yaml).

    A frozen pydantic model, hashable and picklable (Dask ships it in every ModelSpec).
    Values come through :func:`build_config` / :func:`load_config`, whose errors name the
    key and where it came from; the defaults live in configs/method.yaml only.
    """

    clip_model: ClipModel
    random_seed: Integer
    method: Method
    base: Base
    patch_patch: AblationSource
    cls_row: AblationSource
    cls_col: ClsColumn
    alpha: UnitInterval
    rotations: Rotations
    rotation_weights: Weights
    xx_layers: Blocks
    xx_norm: XXNorm
    xx_scale: XXScale
    fuse_layers: Blocks
    fuse_weights: OptionalWeights
    cls_layers: Blocks
    lambda_cls: Number
    logit_scale: Positive
    prob_thd: Probability
    crop: Crop
    stride: Integer
    #: crops per forward pass; AUTO_BATCH (0) = 'auto', see reattn_batch.workers.batching
    batch_size: BatchSize
    dtype: Dtype
    upsampler_path: UpsamplerPath

    # --- checks across keys (``info.data``: the keys above that validated) -------------
    @field_validator("rotation_weights")
    @classmethod
    def _one_weight_per_rotation(cls, value: tuple, info: ValidationInfo) -> tuple:
        rotations = info.data.get("rotations")
        if rotations is not None and len(value) != len(rotations):
            raise ValueError("needs one weight per entry of 'rotations'")
        return value

    @field_validator("fuse_weights")
    @classmethod
    def _one_weight_per_fuse_layer(cls, value: tuple | None, info: ValidationInfo) -> Any:
        layers = info.data.get("fuse_layers")
        if value is not None and layers is not None and len(value) != len(layers):
            raise ValueError("needs one weight per entry of 'fuse_layers', or null")
        return value

    @field_validator("stride")
    @classmethod
    def _stride_within_crop(cls, value: int, info: ValidationInfo) -> int:
        crop = info.data.get("crop")
        if not 0 < value <= (crop if crop is not None else value):
            raise ValueError("must lie in 1..crop")
        return value

    # --- derived views -------------------------------------------------------------
    @property
    def attention_base(self) -> str:
        """The method whose final-block attention A is computed first (reattnclip: its base)."""
        return self.base if self.method == "reattnclip" else self.method

    @property
    def betas(self) -> tuple[float, ...]:
        """beta_l for each fuse layer; default (1 - alpha) / |L_fuse| each (SPEC 2.3)."""
        if self.fuse_weights is not None:
            return self.fuse_weights
        n = len(self.fuse_layers)
        return tuple((1.0 - self.alpha) / n for _ in range(n))

    def as_dict(self) -> dict[str, Any]:
        """Plain YAML/JSON-serialisable values in method.yaml's key order, for metadata and
        fingerprints (lists for tuples, ``batch_size`` 'auto' for AUTO_BATCH)."""
        out = {}
        for key, value in self:
            if key == "batch_size" and value == AUTO_BATCH:
                value = AUTO
            out[key] = list(value) if isinstance(value, tuple) else value
        return out

    def replace(self, **changes: Any) -> MethodConfig:
        return build_config({**self.as_dict(), **changes}, source="replace()")


KEYS = tuple(MethodConfig.model_fields)


def build_config(values: Mapping[str, Any], source: str | Mapping[str, str]) -> MethodConfig:
    """Validate a complete mapping of keys into a MethodConfig; a UserError names the first
    bad key and its ``source`` (one for all keys, or each key's own)."""

    def where(key: str) -> str:
        return source if isinstance(source, str) else source.get(key, "given")

    try:
        return MethodConfig.model_validate(dict(values))
    except ValidationError as exc:
        problem = first_problem(exc, prefer=("extra_forbidden", "missing"))
    key = str(problem.loc[0]) if problem.loc else "?"
    if problem.kind == "extra_forbidden":
        raise ModelError(
            f"unknown config key '{key}' ({where(key)}); known keys: {', '.join(KEYS)}"
        ) from None
    if problem.kind == "missing":
        raise ModelError(f"config key '{key}' is missing ({where(key)})") from None
    shown = "" if repr(problem.value) in problem.msg else f", got {problem.value!r}"
    raise ModelError(f"config key '{key}' ({where(key)}): {problem.msg}{shown}") from None


#: The deepest nesting of collections a YAML file may have (job specs need about 8).
MAX_YAML_DEPTH = 64


class _Refused(yaml.YAMLError):
    """A YAML construct :class:`PlainYamlLoader` does not read; ``mark``: where."""

    def __init__(self, problem: str, mark: yaml.Mark) -> None:
        super().__init__(problem)
        self.problem, self.mark = problem, mark


class PlainYamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader without aliases (``*name``, merge keys ``<<: *name``) and at
    most MAX_YAML_DEPTH levels deep: an alias repeats a subtree without its size in the
    file ("billion laughs": nine lines that expand to 10**9 values downstream), and deep
    nesting exhausts the recursion of the parser."""

    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            raise _Refused(
                f"YAML aliases (*{event.anchor}) are not allowed; write the value out",
                event.start_mark,
            )
        if self._depth >= MAX_YAML_DEPTH:
            raise _Refused(f"nested more than {MAX_YAML_DEPTH} levels deep", event.start_mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def read_yaml(path: str | Path, what: str) -> Any:
    """Parse a YAML file (:class:`PlainYamlLoader`: no aliases, bounded depth); a missing
    or unreadable file is a UserError naming ``what`` (e.g. "--config") and the path.
    Every YAML the project reads comes through here."""
    path = Path(path)
    try:
        return yaml.load(path.read_text(), Loader=PlainYamlLoader)
    except FileNotFoundError:
        raise ModelError(f"{what} {path}: no such file") from None
    except _Refused as exc:
        raise ModelError(f"{what} {path}: line {exc.mark.line + 1}: {exc.problem}") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        first = " ".join(str(exc).split()) or type(exc).__name__
        raise ModelError(f"{what} {path}: not readable YAML ({first})") from None


def _read_yaml(path: Path, what: str) -> dict[str, Any]:
    data = read_yaml(path, what)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ModelError(f"{what} {path}: expected a mapping of key: value")
    return data


def parse_set_option(item: str) -> tuple[str, Any]:
    """``key=value`` with the value parsed as YAML (so ``alpha=0.3``, ``rotations=[0,180]``)."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ModelError(f"sets={item!r}: expected key=value, e.g. sets=alpha=0.3")
    if key not in KEYS:
        raise ModelError(f"unknown config key '{key}' in `sets`; known keys: {', '.join(KEYS)}")
    try:
        return key, yaml.safe_load(raw)
    except yaml.YAMLError:
        raise ModelError(f"sets={key}: value {raw!r} is not valid YAML") from None


def load_config(
    config_file: str | Path | None = None,
    sets: Sequence[str] = (),
    overrides: Mapping[str, Any] | None = None,
) -> MethodConfig:
    """Defaults from configs/method.yaml, then ``config_file``, then ``overrides``
    (values the CLI sets from dedicated flags such as --method; None: not set), then
    ``--set`` items. An error names the key and the layer its value came from."""
    values = _read_yaml(DEFAULTS_FILE, "defaults file")
    origin = dict.fromkeys(values, DEFAULTS_FILE.name)
    layers: list[tuple[Mapping[str, Any], str]] = []
    if config_file is not None:
        layers.append((_read_yaml(Path(config_file), "--config"), f"config_file={config_file}"))
    layers.append(({k: v for k, v in (overrides or {}).items() if v is not None}, "overrides"))
    for item in sets:
        key, value = parse_set_option(item)
        layers.append(({key: value}, f"--set {key}"))
    for layer, name in layers:
        values.update(layer)
        origin.update(dict.fromkeys(layer, name))
    return build_config(values, origin)
