"""`reattn-batch segment` end to end through the real CLI."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from conftest import shared_file

from reattn_batch.cli import main
from reattn_batch.workers.postprocess import labels_from_logits

TINY = ["--clip-weights", "random", "--set", "clip_model=ViT-T-16-test", "--upsampler", "bilinear"]


def run_cli(args: list[str]) -> None:
    main([str(a) for a in args])


def test_full_vit_b16_random_weights_on_a_real_image(tmp_path):
    image = shared_file("rasters/oem_koeln_50.tif")
    ckpt = shared_file("weights/featup_clip_jbu_stack_cocostuff.ckpt")
    pred, logits_file = tmp_path / "pred.png", tmp_path / "logits.npy"
    run_cli([
        "segment", image, "--classes", "building,road/street,water,tree",
        "--clip-weights", "random",
        "--upsampler", "jbu_stack", "--upsampler-weights", ckpt, "--set", "batch_size=3",
        "-o", pred, "--save-logits", logits_file,
    ])  # fmt: skip
    labels = cv2.imread(str(pred), cv2.IMREAD_UNCHANGED)
    logits = np.load(logits_file)
    assert labels.shape == (1000, 1000) and labels.dtype == np.uint8
    assert logits.shape == (6, 1000, 1000) and logits.dtype == np.float32  # background + 5 queries
    assert np.isfinite(logits).all()
    assert set(np.unique(labels)) <= {0, 1, 2, 3, 4}
    want, _ = labels_from_logits(torch.from_numpy(logits), [0, 1, 2, 2, 3, 4], 5, 50.0, 0.0, 0)
    assert np.array_equal(labels, want.numpy())


@pytest.fixture
def small_png(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (200, 260, 3), dtype=np.uint8)
    path = tmp_path / "small.png"
    cv2.imwrite(str(path), image)
    return path


def test_prob_thd_one_sends_every_pixel_to_background(tmp_path, small_png):
    pred = tmp_path / "p.png"
    run_cli(
        [
            "segment",
            small_png,
            "--classes",
            "water/river,building",
            *TINY,
            "--prob-thd",
            "1.0",
            "-o",
            pred,
        ]
    )
    assert (cv2.imread(str(pred), cv2.IMREAD_UNCHANGED) == 0).all()


def test_resize_none_and_448_keep_the_input_size(tmp_path, small_png):
    for resize in ("none", "448"):
        out = tmp_path / f"l{resize}.npy"
        run_cli(
            [
                "segment",
                small_png,
                "--classes",
                "a,b",
                *TINY,
                "--resize",
                resize,
                "--save-logits",
                out,
            ]
        )
        assert np.load(out).shape == (3, 200, 260)


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--classes", ""], "class list is empty"),
        (["--classes", "road,road"], "listed twice"),
        (["--classes", "a", "--set", "alpah=1"], "'alpah'"),
        (["--classes", "a", "--no-background", "--prob-thd", "0.5"], "background class"),
        (
            [
                "--classes",
                "a",
                "--upsampler",
                "jbu_one",
                "--upsampler-weights",
                "/nonexistent.ckpt",
            ],
            "/nonexistent.ckpt",
        ),
        (["--classes", "a", "--resize", "big"], "--resize"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, small_png, capsys, extra, needle):
    tiny = ["--clip-weights", "random", "--set", "clip_model=ViT-T-16-test"]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["segment", small_png, *tiny, *extra, "-o", tmp_path / "p.png"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("reattn-batch: error:") and needle in err[0]
    assert not (tmp_path / "p.png").exists()


@pytest.mark.parametrize("content", [None, b"not an image at all"])
def test_missing_or_unreadable_image(tmp_path, capsys, content):
    path = tmp_path / "in.png"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(SystemExit):
        run_cli(["segment", path, "--classes", "a", *TINY, "-o", tmp_path / "p.png"])
    err = capsys.readouterr().err
    assert str(path) in err and ("no such file" in err or "not a readable image" in err)


def test_image_too_small_for_simfeatup_is_one_clear_line(tmp_path, capsys):
    ckpt = shared_file("weights/featup_clip_jbu_stack_cocostuff.ckpt")
    image = tmp_path / "tiny.png"
    cv2.imwrite(str(image), np.zeros((20, 30, 3), np.uint8))
    upsampler = ["--upsampler", "jbu_stack", "--upsampler-weights", ckpt]
    args = ["segment", image, "--classes", "a", "--clip-weights", "random", *upsampler,
            "--resize", "none", "-o", tmp_path / "p.png"]  # fmt: skip
    with pytest.raises(SystemExit):
        run_cli(args)
    err = capsys.readouterr().err
    assert "too small for SimFeatUp" in err and "--upsampler bilinear" in err
