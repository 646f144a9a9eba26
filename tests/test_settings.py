"""The run settings schema: one definition of every default and allowed value, used by the
CLI and job specs; errors name the flag or the key."""

from __future__ import annotations

import pytest
from reattn_batch.cli import cli
from reattn_batch.settings import (
    DEFAULT_BLOCK_SIZE,
    ModelSettings,
    SceneSettings,
    from_flags,
    option_choices,
)
from reattn_batch.workers.config import METHODS
from reattn_batch.workers.errors import UserError
from reattn_batch.workers.upsampler import UPSAMPLER_KINDS


def choices(command: str, flag: str) -> list[str]:
    (option,) = [p for p in cli.commands[command].params if flag in p.opts]
    return list(option.type.choices)


def test_cli_choices_and_defaults_are_the_schemas():
    assert option_choices(ModelSettings, "method") == list(METHODS)
    assert option_choices(ModelSettings, "upsampler") == list(UPSAMPLER_KINDS)
    for command in ("segment", "run", "eval"):
        assert choices(command, "--method") == list(METHODS)
        assert choices(command, "--upsampler") == list(UPSAMPLER_KINDS)
    (block,) = [p for p in cli.commands["run"].params if "--block-size" in p.opts]
    assert block.default == DEFAULT_BLOCK_SIZE == SceneSettings().block_size == "auto"


@pytest.mark.parametrize(
    ("values", "flag"),
    [
        ({"block_size": 1000}, "--block-size"),
        ({"bands": "1,2"}, "--bands"),
        ({"stretch": "5,1"}, "--stretch"),
        ({"gsd": -1.0}, "--gsd"),
    ],
)
def test_flag_errors_name_the_flag(values, flag):
    with pytest.raises(UserError, match=f"^{flag}: "):
        from_flags(SceneSettings, values)


def test_flag_text_is_parsed_as_the_schema_says():
    settings = from_flags(SceneSettings, {"bands": "3,2,1", "stretch": "0,3000"})
    assert settings.bands == (3, 2, 1) and settings.stretch == (0.0, 3000.0)
