"""Method configuration: configs/method.yaml, validated at load.

The YAML file is the single source of defaults. A user's ``--config FILE`` may
override any subset of its keys and ``--set key=value`` any single key; every
error names the offending key and where it came from.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml
from reattn_batch.workers.errors import UserError

#: The ``configs`` package (shipped in the wheel), found through importlib.resources.
CONFIG_DIR = Path(str(files("reattn_batch.configs")))
DEFAULTS_FILE = CONFIG_DIR / "method.yaml"

METHODS = ("vanilla", "maskclip", "sclip", "clearclip", "segearth-ov", "reattnclip")
BASES = ("maskclip", "sclip", "clearclip", "segearth-ov")
ROTATIONS = (0, 90, 180, 270)
UPSAMPLER_PATHS = ("rank_reduced", "full")  # workers/upsampled_logits.py
AUTO = "auto"
AUTO_BATCH = (
    0  # how `batch_size: auto` is held: resolved per device by reattn_batch.workers.batching
)


@dataclasses.dataclass(frozen=True)
class MethodConfig:
    """Every hyperparameter of the model and of crop inference (see configs/method.yaml)."""

    clip_model: str
    random_seed: int
    method: str
    base: str
    patch_patch: str
    cls_row: str
    cls_col: str
    alpha: float
    rotations: tuple[int, ...]
    rotation_weights: tuple[float, ...]
    xx_layers: tuple[int, ...]
    xx_norm: str
    xx_scale: str
    fuse_layers: tuple[int, ...]
    fuse_weights: tuple[float, ...] | None
    cls_layers: tuple[int, ...]
    lambda_cls: float
    logit_scale: float
    prob_thd: float
    crop: int
    stride: int
    batch_size: (
        int  # crops per forward pass; AUTO_BATCH (0) = 'auto', see reattn_batch.workers.batching
    )
    dtype: str
    upsampler_path: str

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
        """Plain YAML/JSON-serialisable values, for metadata and fingerprints."""
        out = dataclasses.asdict(self)
        if out["batch_size"] == AUTO_BATCH:
            out["batch_size"] = AUTO
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    def replace(self, **changes: Any) -> MethodConfig:
        return build_config({**self.as_dict(), **changes}, source="replace()")


_FIELDS = {f.name: f for f in dataclasses.fields(MethodConfig)}
_CHOICES = {
    "method": METHODS,
    "base": BASES,
    "patch_patch": ("base", "reattn"),
    "cls_row": ("base", "reattn"),
    "cls_col": ("keep", "zero"),
    "xx_norm": ("ln1", "none", "l2"),
    "xx_scale": ("width",),
    "dtype": ("auto", "fp32", "fp16", "bf16"),
    "upsampler_path": UPSAMPLER_PATHS,
}
_INT_LISTS = ("rotations", "xx_layers", "fuse_layers", "cls_layers")
_FLOAT_LISTS = ("rotation_weights", "fuse_weights")


def _coerce(key: str, value: Any, source: str) -> Any:
    """Convert one YAML value to the field's type, or raise a UserError naming the key."""
    kind = _FIELDS[key].type

    def bad(expected: str) -> UserError:
        return UserError(f"config key '{key}' ({source}): expected {expected}, got {value!r}")

    if key in _INT_LISTS or key in _FLOAT_LISTS:
        if value is None and key == "fuse_weights":
            return None
        if not isinstance(value, Sequence) or isinstance(value, str):
            raise bad("a list")
        cast = int if key in _INT_LISTS else float
        try:
            if cast is int and any(isinstance(v, bool) or int(v) != v for v in value):
                raise ValueError
            return tuple(cast(v) for v in value)
        except (TypeError, ValueError):
            raise bad(f"a list of {cast.__name__}s") from None
    if key == "batch_size":
        if value == AUTO:
            return AUTO_BATCH
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise bad("a positive integer or 'auto'")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad("a number")
        return float(value)
    if not isinstance(value, str):
        raise bad("a string")
    if key in _CHOICES and value not in _CHOICES[key]:
        raise bad("one of " + ", ".join(_CHOICES[key]))
    return value


def _check_ranges(cfg: MethodConfig, source: str) -> None:
    def bad(key: str, why: str) -> UserError:
        return UserError(f"config key '{key}' ({source}): {why}")

    if not 0.0 <= cfg.alpha <= 1.0:
        raise bad("alpha", f"must lie in [0, 1], got {cfg.alpha}")
    if not cfg.rotations or any(r not in ROTATIONS for r in cfg.rotations):
        raise bad("rotations", f"must be a non-empty subset of {list(ROTATIONS)}")
    if len(set(cfg.rotations)) != len(cfg.rotations):
        raise bad("rotations", "lists a rotation twice")
    if len(cfg.rotation_weights) != len(cfg.rotations):
        raise bad("rotation_weights", "needs one weight per entry of 'rotations'")
    for key in ("xx_layers", "fuse_layers", "cls_layers"):
        layers = getattr(cfg, key)
        if not layers or any(not 1 <= k <= 11 for k in layers):
            raise bad(
                key, "must be a non-empty list of blocks in 1..11 (block 12 is the one replaced)"
            )
    if cfg.fuse_weights is not None and len(cfg.fuse_weights) != len(cfg.fuse_layers):
        raise bad("fuse_weights", "needs one weight per entry of 'fuse_layers', or null")
    if not 0.0 <= cfg.prob_thd <= 1.0:
        raise bad("prob_thd", f"must lie in [0, 1], got {cfg.prob_thd}")
    if cfg.crop < 16 or cfg.crop % 16:
        raise bad("crop", "must be a positive multiple of 16")
    if not 0 < cfg.stride <= cfg.crop:
        raise bad("stride", "must lie in 1..crop")
    if cfg.logit_scale <= 0:
        raise bad("logit_scale", "must be positive")
    from reattn_batch.workers.backbone import (
        check_clip_model,  # open_clip's registry, imported lazily
    )

    check_clip_model(cfg.clip_model, where=f"config key 'clip_model' ({source})")


def build_config(values: Mapping[str, Any], source: str) -> MethodConfig:
    """Validate a complete mapping of keys into a MethodConfig."""
    unknown = sorted(set(values) - set(_FIELDS))
    if unknown:
        raise UserError(
            f"unknown config key '{unknown[0]}' ({source}); known keys: {', '.join(_FIELDS)}"
        )
    missing = [k for k in _FIELDS if k not in values]
    if missing:
        raise UserError(f"config key '{missing[0]}' is missing ({source})")
    cfg = MethodConfig(**{k: _coerce(k, values[k], source) for k in _FIELDS})
    _check_ranges(cfg, source)
    return cfg


def read_yaml(path: str | Path, what: str) -> Any:
    """Parse a YAML file; a missing or unreadable file is a UserError naming ``what``
    (e.g. "--config") and the path. Every YAML the project reads comes through here."""
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{what} {path}: no such file") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        first = " ".join(str(exc).split()) or type(exc).__name__
        raise UserError(f"{what} {path}: not readable YAML ({first})") from None


def _read_yaml(path: Path, what: str) -> dict[str, Any]:
    data = read_yaml(path, what)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{what} {path}: expected a mapping of key: value")
    return data


def parse_set_option(item: str) -> tuple[str, Any]:
    """``key=value`` with the value parsed as YAML (so ``alpha=0.3``, ``rotations=[0,180]``)."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise UserError(f"--set {item!r}: expected key=value, e.g. --set alpha=0.3")
    if key not in _FIELDS:
        raise UserError(f"unknown config key '{key}' in --set; known keys: {', '.join(_FIELDS)}")
    try:
        return key, yaml.safe_load(raw)
    except yaml.YAMLError:
        raise UserError(f"--set {key}: value {raw!r} is not valid YAML") from None


def load_config(
    config_file: str | Path | None = None,
    sets: Sequence[str] = (),
    overrides: Mapping[str, Any] | None = None,
) -> MethodConfig:
    """Defaults from configs/method.yaml, then ``config_file``, then ``overrides``
    (values the CLI sets from dedicated flags such as --method), then ``--set`` items."""
    values = _read_yaml(DEFAULTS_FILE, "defaults file")
    source = str(DEFAULTS_FILE.name)
    if config_file is not None:
        user = _read_yaml(Path(config_file), "--config")
        unknown = sorted(set(user) - set(_FIELDS))
        if unknown:
            raise UserError(f"unknown config key '{unknown[0]}' in --config {config_file}")
        values.update(user)
        source = f"--config {config_file}"
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = value
    for item in sets:
        key, value = parse_set_option(item)
        values[key] = value
        source = f"--set {key}" if len(sets) == 1 else "--set"
    return build_config(values, source)
