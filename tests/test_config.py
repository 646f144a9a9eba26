"""configs/method.yaml is validated at load; errors name the key."""

from __future__ import annotations

import json
import pickle

import pytest
from pydantic import ValidationError

from reattn_batch.workers.config import METHODS, load_config
from reattn_batch.workers.errors import UserError


def test_defaults_are_the_spec_values():
    cfg = load_config()
    assert cfg.method == "reattnclip" and cfg.base == "segearth-ov"
    assert (cfg.patch_patch, cfg.cls_row, cfg.cls_col) == ("reattn", "reattn", "zero")
    assert cfg.alpha == 0.2
    assert cfg.rotations == (0, 90, 180, 270) and cfg.rotation_weights == (1.0, 0.4, 0.4, 0.4)
    assert cfg.xx_layers == (9, 10, 11) and cfg.fuse_layers == (9, 10, 11)
    assert cfg.cls_layers == (6, 7, 8, 9)
    assert cfg.betas == pytest.approx((0.8 / 3,) * 3)
    assert (cfg.lambda_cls, cfg.logit_scale, cfg.crop, cfg.stride) == (-0.3, 50.0, 224, 112)


def test_set_and_config_file_override(tmp_path):
    user = tmp_path / "user.yaml"
    user.write_text("alpha: 0.5\nfuse_weights: [0.1, 0.2, 0.2]\n")
    cfg = load_config(user, sets=["rotations=[0, 180]", "rotation_weights=[1, 0.5]", "xx_norm=l2"])
    assert cfg.alpha == 0.5 and cfg.betas == (0.1, 0.2, 0.2)
    assert cfg.rotations == (0, 180) and cfg.xx_norm == "l2"
    assert load_config(overrides={"method": "sclip", "prob_thd": None}).method == "sclip"


@pytest.mark.parametrize(
    "sets, key",
    [
        (["alpah=0.3"], "alpah"),
        (["alpha=high"], "alpha"),
        (["alpha=1.5"], "alpha"),
        (["method=segformer"], "method"),
        (["rotations=[0, 45]"], "rotations"),
        (["rotation_weights=[1, 1]"], "rotation_weights"),
        (["xx_layers=[12]"], "xx_layers"),
        (["fuse_weights=[0.5]"], "fuse_weights"),
        (["crop=100"], "crop"),
        (["batch_size=0"], "batch_size"),
        (["cls_layers=[6.5]"], "cls_layers"),
        (["xx_norm=ln2"], "xx_norm"),
    ],
)
def test_bad_values_name_the_key(sets, key):
    with pytest.raises(UserError, match=f"'{key}'"):
        load_config(sets=sets)


def test_bad_config_file(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("alpha: [unclosed\n")
    with pytest.raises(UserError, match="not readable YAML"):
        load_config(bad)
    bad.write_text("betta: 0.1\n")
    with pytest.raises(UserError, match="'betta'"):
        load_config(bad)
    with pytest.raises(UserError, match="key=value"):
        load_config(sets=["alpha"])


@pytest.mark.parametrize(
    "name",
    [
        "hf-hub:timm/ViT-B-16-SigLIP",  # a remote config and weights
        "local-dir:/tmp/some-model",  # an arbitrary local config
        "xlm-roberta-base-ViT-B-32",  # open_clip ships it, but its text tower comes from HF
        "ViT-B-16-SigLIP",  # timm vision tower and a HF tokenizer
        "RN50",  # no ViT
        "ViT-B-16-nope",
    ],
)
def test_clip_model_is_a_local_open_clip_vit(name):
    with pytest.raises(UserError) as err:
        load_config(sets=[f"clip_model={name}"])
    msg = str(err.value)
    assert "'clip_model'" in msg and repr(name) in msg and "\n" not in msg
    assert "ViT-B-16-quickgelu" in msg  # the allowed form, by example


@pytest.mark.parametrize("name", ["ViT-B-16-quickgelu", "ViT-B-16", "ViT-L-14", "ViT-T-16-test"])
def test_open_clip_vits_and_our_test_architecture_are_allowed(name):
    assert load_config(sets=[f"clip_model={name}"]).clip_model == name


def test_backbone_refuses_a_hub_model_without_touching_the_network(monkeypatch):
    import socket

    from reattn_batch.workers.backbone import load_backbone

    def no_network(*args, **kwargs):
        raise AssertionError("network must not be used")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    with pytest.raises(UserError, match="'hf-hub:laion/CLIP-ViT-B-16-laion2B-s34B-b88K'"):
        load_backbone("random", "hf-hub:laion/CLIP-ViT-B-16-laion2B-s34B-b88K")


# The JSON of the default config's as_dict(), captured by hand from the hand-coerced
# dataclass MethodConfig this schema replaced: stores and model caches made before hash
# exactly these bytes (ModelSpec.fingerprint), so they must not change.
DEFAULT_CONFIG_JSON = (
    '{"clip_model": "ViT-B-16-quickgelu", "random_seed": 0, "method": "reattnclip", '
    '"base": "segearth-ov", "patch_patch": "reattn", "cls_row": "reattn", "cls_col": "zero", '
    '"alpha": 0.2, "rotations": [0, 90, 180, 270], "rotation_weights": [1.0, 0.4, 0.4, 0.4], '
    '"xx_layers": [9, 10, 11], "xx_norm": "ln1", "xx_scale": "width", '
    '"fuse_layers": [9, 10, 11], "fuse_weights": null, "cls_layers": [6, 7, 8, 9], '
    '"lambda_cls": -0.3, "logit_scale": 50.0, "prob_thd": 0.0, "crop": 224, "stride": 112, '
    '"batch_size": "auto", "dtype": "auto", "upsampler_path": "rank_reduced"}'
)


def test_default_config_json_is_unchanged():
    assert json.dumps(load_config().as_dict()) == DEFAULT_CONFIG_JSON


def test_model_fingerprints_are_unchanged():
    """ModelSpec.fingerprint of the default config and of two changed ones, as the
    dataclass MethodConfig gave them (captured by hand before the pydantic schema)."""
    from reattn_batch.workers.model_spec import ModelSpec

    def fingerprint(sets):
        return ModelSpec("random", "bilinear", None, load_config(sets=sets)).fingerprint

    assert fingerprint([]) == "469985c269a44e53"
    assert fingerprint(["batch_size=4"]) == "287a5ea5f5998601"
    assert fingerprint(["fuse_weights=[0.1, 0.2, 0.3]"]) == "17be00fbf9466225"


def test_config_is_frozen_hashable_and_survives_pickling():
    cfg = load_config(sets=["rotations=[0, 180]", "rotation_weights=[1, 0.5]"])
    again = pickle.loads(pickle.dumps(cfg))
    assert again == cfg and hash(again) == hash(cfg) and again.rotations == (0, 180)
    assert again != load_config()
    with pytest.raises(ValidationError):
        cfg.alpha = 0.5  # type: ignore[misc]
    assert cfg.replace() == cfg and cfg.replace(alpha=0.5).alpha == 0.5


def test_a_bad_value_in_a_config_file_names_its_key_and_the_file(tmp_path):
    user = tmp_path / "user.yaml"
    user.write_text("alpha: 0.5\nprob_thd: 1.5\n")
    expected = f"config key 'prob_thd' (config_file={user}): must lie in [0, 1], got 1.5"
    with pytest.raises(UserError) as err:
        load_config(user)
    assert str(err.value) == expected
    with pytest.raises(UserError) as err:  # a --set of another key does not take the blame
        load_config(user, sets=["alpha=0.3"])
    assert str(err.value) == expected
    user.write_text("crop: 100\n")
    with pytest.raises(UserError) as err:
        load_config(user)
    assert str(err.value) == f"config key 'crop' (config_file={user}): must be a positive " \
        "multiple of 16, got 100"  # fmt: skip


def test_each_error_names_the_layer_its_value_came_from(tmp_path):
    with pytest.raises(UserError) as err:
        load_config(overrides={"method": "segformer", "prob_thd": None})
    assert str(err.value) == (
        "config key 'method' (overrides): expected one of vanilla, maskclip, sclip, "
        "clearclip, segearth-ov, reattnclip, got 'segformer'"
    )
    with pytest.raises(UserError) as err:
        load_config(sets=["alpha=0.3", "batch_size=true"])
    assert str(err.value) == (
        "config key 'batch_size' (--set batch_size): expected a positive integer or 'auto', "
        "got True"
    )
    user = tmp_path / "user.yaml"
    user.write_text("betta: 0.1\n")
    with pytest.raises(UserError, match=rf"^unknown config key 'betta' \(config_file={user}\); "):
        load_config(user)


def test_run_settings_share_the_config_rule_for_method_and_prob_thd():
    """--method and --prob-thd are validated by the same types as method.yaml's keys: the
    same allowed values and the same words, where the Python keyword is named instead of
    the key (and the CLI words it as its flag)."""
    from reattn_batch.cli import cli
    from reattn_batch.cli.errors import as_flags
    from reattn_batch.settings import ModelSettings, from_keywords

    with pytest.raises(UserError) as err:
        from_keywords(ModelSettings, {"prob_thd": 1.5})
    assert str(err.value) == "`prob_thd`: must lie in [0, 1] (got 1.5)"
    assert as_flags(str(err.value), cli) == "--prob-thd: must lie in [0, 1] (got 1.5)"
    with pytest.raises(UserError) as err:
        from_keywords(ModelSettings, {"method": "segformer"})
    assert str(err.value).startswith("`method`: expected one of " + ", ".join(METHODS))
    spec = from_keywords(ModelSettings, {"method": "sclip", "prob_thd": 0.25}).model_spec()
    assert (spec.cfg.method, spec.cfg.prob_thd) == ("sclip", 0.25)
