"""The model settings of an evaluation: a dataset preset on top of the user's flags, and
``--grid FILE`` rows (several named settings on the same images).

Precedence of config keys, lowest first: configs/method.yaml, the preset's ``config``
and ``prob_thd``, --config FILE, --method/--prob-thd, --set, the grid row.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from reattn_batch.eval.runner import Setting
from reattn_batch.workers.config import build_config, parse_set_option, read_yaml
from reattn_batch.workers.errors import InputError

GRID_KEYS = ("name", "config", "reported_miou", "description")


def _explicit_keys(model: dict[str, Any]) -> set[str]:
    """Config keys the user set on the command line (these override the preset)."""
    keys = {parse_set_option(item)[0] for item in model["sets"]}
    if model["config_file"] is not None:
        data = read_yaml(model["config_file"], "--config") or {}
        keys |= set(data)
    if model["method"] is not None:
        keys.add("method")
    if model["prob_thd"] is not None:
        keys.add("prob_thd")
    return keys


def with_preset(spec, preset, model: dict[str, Any]):
    """The spec with the preset's config keys and prob_thd where the user set none."""
    explicit = _explicit_keys(model)
    values = {**preset.config, "prob_thd": preset.prob_thd}
    chosen = {k: v for k, v in values.items() if k not in explicit}
    cfg = build_config({**spec.cfg.as_dict(), **chosen}, source=f"dataset preset {preset.path}")
    return dataclasses.replace(spec, cfg=cfg)


def load_grid(path: Path, base_spec) -> list:
    """--grid FILE: a YAML list of {name, config: {key: value}, reported_miou?, description?}
    -> Settings on top of ``base_spec``; errors name the row and the key."""
    rows = read_yaml(path, "--grid")
    if not isinstance(rows, list) or not rows:
        raise InputError(f"grid={path}: expected a non-empty list of settings")
    settings, seen = [], set()
    for i, row in enumerate(rows, 1):
        where = f"--grid {path}, setting {i}"
        if not isinstance(row, dict):
            raise InputError(f"{where}: expected a mapping with 'name' and 'config'")
        unknown = sorted(set(row) - set(GRID_KEYS))
        if unknown:
            raise InputError(f"{where}: unknown key '{unknown[0]}'; known: {', '.join(GRID_KEYS)}")
        name = row.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9._+-]+", name):
            raise InputError(
                f"{where}: key 'name': expected letters, digits, . _ + -; got {name!r}"
            )
        if name in seen:
            raise InputError(f"{where}: key 'name': {name!r} is used twice")
        seen.add(name)
        config = row.get("config") or {}
        reported = row.get("reported_miou") or {}
        if not isinstance(config, dict):
            raise InputError(f"{where} ({name}): key 'config': expected a mapping of config keys")
        if not isinstance(reported, dict):
            raise InputError(f"{where} ({name}): key 'reported_miou': expected dataset: mIoU")
        cfg = build_config({**base_spec.cfg.as_dict(), **config}, source=f"{where} ({name})")
        settings.append(
            Setting(name, dataclasses.replace(base_spec, cfg=cfg), dict(config), dict(reported))
        )
    return settings
