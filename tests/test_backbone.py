"""Weights sources (SPEC 2.1): random is non-degenerate, files load safely,
openai fails fast offline."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import open_clip
import pytest
import torch

from reattn_batch.workers.backbone import _hub_reachable, load_backbone
from reattn_batch.workers.errors import UserError
from reattn_batch.workers.vit import qkv, run_trunk, softmax_attention


def test_random_weights_give_peaked_attention_and_distinct_tokens():
    backbone = load_backbone("random", "ViT-T-16-test", seed=0)
    assert backbone.identity.random and backbone.identity.digest == "seed=0"
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    trunk = run_trunk(backbone.visual, x, z_layers={11})
    last = backbone.visual.transformer.resblocks[-1]
    q, k, _ = qkv(last.attn, last.ln_1(trunk.z[11]))
    a = softmax_attention(q, k)  # (1, heads, T, T): block 12's own q.k maps
    entropy = -(a * a.clamp_min(1e-12).log()).sum(-1).mean()
    assert entropy < 0.7 * torch.log(torch.tensor(197.0))  # far from uniform attention
    tokens = trunk.z[11][0, 1:]
    tokens = tokens / tokens.norm(dim=-1, keepdim=True)
    cos = tokens @ tokens.T
    assert cos[~torch.eye(196, dtype=bool)].mean() < 0.9  # patch tokens are not all alike
    # open_clip's own init is the degenerate case this guards against
    plain = open_clip.create_model("ViT-T-16-test", pretrained=None).eval()
    z = run_trunk(plain.visual, x).z[11]
    q, k, _ = qkv(
        plain.visual.transformer.resblocks[-1].attn, plain.visual.transformer.resblocks[-1].ln_1(z)
    )
    a = softmax_attention(q, k)
    assert -(a * a.clamp_min(1e-12).log()).sum(-1).mean() > 0.95 * torch.log(torch.tensor(197.0))


def test_random_weights_are_seeded():
    a = load_backbone("random", "ViT-T-16-test", seed=1).model.state_dict()
    b = load_backbone("random", "ViT-T-16-test", seed=1).model.state_dict()
    c = load_backbone("random", "ViT-T-16-test", seed=2).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_state_dict_file_round_trip_and_identity(tmp_path):
    source = load_backbone("random", "ViT-T-16-test", seed=4)
    path = tmp_path / "tiny.pt"
    torch.save(
        {"state_dict": {"module." + k: v.half() for k, v in source.model.state_dict().items()}},
        path,
    )
    loaded = load_backbone(str(path), "ViT-T-16-test")
    assert loaded.identity.source == "file" and not loaded.identity.random
    assert len(loaded.identity.digest) == 64
    for key, value in source.model.state_dict().items():
        torch.testing.assert_close(loaded.model.state_dict()[key], value.half().float())


def test_wrong_architecture_file_is_one_clear_error(tmp_path):
    path = tmp_path / "tiny.pt"
    torch.save(load_backbone("random", "ViT-T-16-test").model.state_dict(), path)
    with pytest.raises(UserError, match="ViT-B-16-quickgelu"):
        load_backbone(str(path), "ViT-B-16-quickgelu")


@pytest.mark.skipif(_hub_reachable(), reason="this check is for offline machines")
def test_openai_weights_offline_fail_with_one_line_naming_the_fix(tmp_path):
    image = tmp_path / "x.png"
    cv2.imwrite(str(image), np.zeros((32, 32, 3), np.uint8))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            "segment",
            str(image),
            "--classes",
            "a",
            "--upsampler",
            "bilinear",
            "-o",
            str(tmp_path / "p.png"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("reattn-batch: error:") and "--clip-weights PATH" in lines[-1]
    assert "Traceback" not in proc.stderr
