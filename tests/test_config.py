"""configs/method.yaml is validated at load; errors name the key."""

from __future__ import annotations

import pytest
from reattn_batch.workers.config import load_config
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
