"""The run settings schema: one definition of every default and allowed value, used by the
CLI and job specs; errors name the keyword (the CLI: the flag) or the key."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from reattn_batch.cli import cli, main
from reattn_batch.settings import (
    DEFAULT_BLOCK_SIZE,
    ModelSettings,
    SceneSettings,
    from_keywords,
    option_choices,
)
from reattn_batch.workers.errors import InputError

# Written out by hand from SPEC 2.2's method table and SPEC 2.6 / README "Model flags"
# (not read from the code): the methods and upsamplers a user is promised.
SPEC_METHODS = ["vanilla", "maskclip", "sclip", "clearclip", "segearth-ov", "reattnclip"]
README_UPSAMPLERS = ["jbu_one", "jbu_stack", "bilinear"]
TINY = ["--clip-weights", "random", "--set", "clip_model=ViT-T-16-test", "--upsampler", "bilinear"]


def choices(command: str, flag: str) -> list[str]:
    (option,) = [p for p in cli.commands[command].params if flag in p.opts]
    return list(option.type.choices)


def test_cli_choices_and_defaults_are_the_documented_ones():
    assert option_choices(ModelSettings, "method") == SPEC_METHODS
    assert option_choices(ModelSettings, "upsampler") == README_UPSAMPLERS
    for command in ("segment", "run", "eval"):
        assert choices(command, "--method") == SPEC_METHODS
        assert choices(command, "--upsampler") == README_UPSAMPLERS
    (block,) = [p for p in cli.commands["run"].params if "--block-size" in p.opts]
    assert block.default == DEFAULT_BLOCK_SIZE == SceneSettings().block_size == "auto"


def test_every_documented_method_builds_and_runs(tmp_path):
    """`segment --method M` for each method of SPEC 2.2 (tiny random model, one crop):
    each writes finite logits of the image's size, and no two methods give the same
    logits, so each name reaches a different final-block attention."""
    image = tmp_path / "small.png"
    rng = np.random.default_rng(0)
    cv2.imwrite(str(image), rng.integers(0, 255, (120, 150, 3), dtype=np.uint8))
    logits = {}
    for method in SPEC_METHODS:
        out = tmp_path / f"{method}.npy"
        main(["segment", str(image), "--classes", "building,road,water", *TINY,
              "--method", method, "--resize", "none", "--save-logits", str(out)])  # fmt: skip
        logits[method] = np.load(out)
        assert logits[method].shape == (4, 120, 150)  # background + 3 classes, image size
        assert np.isfinite(logits[method]).all()
    for i, a in enumerate(SPEC_METHODS):
        for b in SPEC_METHODS[i + 1 :]:
            assert np.abs(logits[a] - logits[b]).max() > 1e-3, (a, b)


@pytest.mark.parametrize(
    "command, args",
    [("segment", ["in.png", "--classes", "a"]), ("run", ["in.tif", "--classes", "a"]),
     ("eval", ["--dataset", "loveda"])],
)  # fmt: skip
def test_an_unknown_method_is_refused_with_one_line(capsys, command, args):
    with pytest.raises(SystemExit) as exit_info:
        main([command, *args, "--method", "segformer"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("reattn-batch: error:"), err
    assert "--method" in err[0] and "'segformer'" in err[0]
    assert all(f"'{method}'" in err[0] for method in SPEC_METHODS)


@pytest.mark.parametrize(
    ("values", "flag"),
    [
        ({"block_size": 1000}, "--block-size"),
        ({"bands": "1,2"}, "--bands"),
        ({"stretch": "5,1"}, "--stretch"),
        ({"gsd": -1.0}, "--gsd"),
    ],
)
def test_errors_name_the_keyword_and_the_cli_words_it_as_the_flag(values, flag):
    from reattn_batch.cli import cli
    from reattn_batch.cli.errors import as_flags

    keyword = next(iter(values))
    with pytest.raises(InputError, match=f"^`{keyword}`: ") as err:
        from_keywords(SceneSettings, values)
    assert as_flags(str(err.value), cli).startswith(f"{flag}: ")


def test_flag_text_is_parsed_as_the_schema_says():
    settings = from_keywords(SceneSettings, {"bands": "3,2,1", "stretch": "0,3000"})
    assert settings.bands == (3, 2, 1) and settings.stretch == (0.0, 3000.0)
