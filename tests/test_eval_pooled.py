"""`eval` pools crops of consecutive images into full batches when batch_size > 1
(issue 9 item 3), with identical results on CPU fp32; and its --report."""

from __future__ import annotations

import json

import cv2
import numpy as np
from conftest import SHARED_DATA, shared_file
from PIL import Image

from reattn_batch.cli import main

TINY = ["--clip-weights", "random", "--set", "clip_model=ViT-T-16-test", "--upsampler", "bilinear"]
# (y, x, h, w) windows of the Potsdam tile: 1, 4, 1, 1 (smaller than a crop: other shape) crops
WINDOWS = [(0, 0, 224, 224), (100, 50, 260, 300), (300, 320, 150, 180), (288, 200, 224, 224)]


def test_batch_4_pools_images_and_equals_batch_1(tmp_path):
    image = cv2.imread(str(shared_file("labelled/potsdam/img/2_10_0_0_512_512.png")))
    label = np.array(Image.open(SHARED_DATA / "labelled" / "potsdam/ann/2_10_0_0_512_512.png"))
    images, labels = tmp_path / "img", tmp_path / "ann"
    images.mkdir()
    labels.mkdir()
    for i, (y, x, h, w) in enumerate(WINDOWS):
        cv2.imwrite(str(images / f"t{i}.png"), image[y : y + h, x : x + w])
        Image.fromarray(label[y : y + h, x : x + w]).save(labels / f"t{i}.png")
    args = ["--dataset", "potsdam", "--images", images, "--labels", labels, *TINY,
            "--method", "segearth-ov", "--resize", "none"]  # fmt: skip
    records = {}
    for batch in (1, 4):
        out = tmp_path / f"b{batch}"
        main(["eval", *map(str, args), "--set", f"batch_size={batch}",
              "--json", str(out.with_suffix(".json")), "--save-predictions", str(out),
              "--report", str(out.with_suffix(".report.json"))])  # fmt: skip
        records[batch] = json.loads(out.with_suffix(".json").read_text())
        report = json.loads(out.with_suffix(".report.json").read_text())
        assert report["batch_size"] == batch and report["images"] == len(WINDOWS)
        assert report["crops_run"] == 1 + 4 + 1 + 1  # 260x300: 2 x 2 crops
        assert report["device"] == "cpu" and report["dtype"] == "fp32"
        seconds = report["seconds"]
        assert 0 < seconds["model"] < seconds["total"] and seconds["load"] > 0
    # Not bitwise: CPU GEMMs round differently for another batch shape (see the logit
    # test below), so a pixel whose top two classes tie within rounding may flip.
    cm1, cm4 = (np.array(records[b]["confusion_matrix"]) for b in (1, 4))
    assert cm1.sum() == cm4.sum() > 0
    assert np.abs(cm1 - cm4).sum() <= 2e-4 * cm1.sum()
    for i in range(len(WINDOWS)):
        a = cv2.imread(str(tmp_path / "b1" / f"t{i}.png"), cv2.IMREAD_UNCHANGED)
        b = cv2.imread(str(tmp_path / "b4" / f"t{i}.png"), cv2.IMREAD_UNCHANGED)
        assert a.shape == b.shape and np.mean(a == b) >= 0.999


def test_pooled_logits_equal_image_by_image_within_rounding():
    """Pooling maps each crop's logits back to its own image: the pooled logits equal
    per-image ones at batch 1 within float rounding (max |diff| reported on failure)."""
    from reattn_batch.eval.pooled import pooled_segmentations
    from reattn_batch.image.segment import segment_array
    from reattn_batch.settings import ModelSettings
    from reattn_batch.workers.classes import parse_classes
    from reattn_batch.workers.model_spec import build_segmenter

    image = cv2.imread(str(shared_file("labelled/potsdam/img/2_10_0_0_512_512.png")))[..., ::-1]
    rgbs = [np.ascontiguousarray(image[y : y + h, x : x + w]) for y, x, h, w in WINDOWS]
    spec = ModelSettings(method="segearth-ov", clip_weights="random", upsampler="bilinear")
    spec = spec.model_spec(["clip_model=ViT-T-16-test", "batch_size=1"])
    classes = parse_classes("building,road,tree,car")
    segmenter = build_segmenter(spec, classes)
    single = [segment_array(segmenter, classes, rgb, None) for rgb in rgbs]
    segmenter.batch_size = 3  # 7 crops of two shapes: batches cross image boundaries
    pooled = list(pooled_segmentations(segmenter, classes, enumerate(rgbs), None))
    assert [key for key, _ in pooled] == list(range(len(rgbs)))  # input order
    for one, (_, many) in zip(single, pooled, strict=True):
        assert one.logits.shape == many.logits.shape
        diff = np.abs(one.logits - many.logits).max()
        assert diff <= 1e-5 * max(1.0, float(np.abs(one.logits).max())), diff
        assert np.mean(one.labels == many.labels) >= 0.999
