"""`reattn-batch eval`: metrics by hand, mmseg's label rules, presets, and the command on
the real labelled samples (tiny architecture, random weights: the figures are not
accuracy; what is tested is that they are computed right)."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from conftest import SHARED_DATA, shared_file
from PIL import Image

from reattn_batch.cli import main
from reattn_batch.cli.options import build_model_spec
from reattn_batch.eval.datasets import (
    Sample,
    available,
    load_preset,
    paired_samples,
    preset_samples,
    read_label,
    reduce_zero_label,
)
from reattn_batch.eval.metrics import confusion_matrix, per_class_iou, summarise
from reattn_batch.eval.runner import ImageTask, LabelRules, Setting
from reattn_batch.eval.settings import load_grid, with_preset
from reattn_batch.workers.errors import UserError

TINY = ["--clip-weights", "random", "--set", "clip_model=ViT-T-16-test", "--upsampler", "bilinear"]
ROOT = Path(__file__).resolve().parents[1]
LABELLED = SHARED_DATA / "labelled"


# the model_options of a tiny random model, as the CLI hands them to build_model_spec
MODEL_FLAGS = {
    "method": None, "clip_weights": "random", "upsampler": "bilinear", "upsampler_weights": None,
    "prob_thd": None, "config_file": None, "sets": (), "device": "cpu",
}  # fmt: skip


def run_eval(*args: object) -> None:
    main(["eval", *(str(a) for a in args)])


def independent_scores(pred_dir: Path, label_dir: Path, num_classes: int, reduce_zero: bool):
    """Confusion matrix and mIoU (percent) from the saved PNGs and the label files, in
    plain numpy, without the project's code."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    extra = np.zeros(num_classes, dtype=np.int64)
    for label_file in sorted(label_dir.iterdir()):
        truth = np.array(Image.open(label_file)).astype(np.int64)
        if reduce_zero:
            truth = np.where(truth == 0, 255, truth - 1)
            truth[truth == 254] = 255
        pred = np.array(Image.open(pred_dir / f"{label_file.stem}.png")).astype(np.int64)
        assert pred.shape == truth.shape
        scored = truth != 255
        t, p = truth[scored], pred[scored]
        listed = t < num_classes
        for i in range(num_classes):
            for j in range(num_classes):
                cm[i, j] += np.count_nonzero((t == i) & (p == j) & listed)
        extra += np.bincount(p[~listed], minlength=num_classes)
    tp = np.diag(cm).astype(float)
    union = cm.sum(axis=0) + extra + cm.sum(axis=1) - tp
    iou = [tp[c] / union[c] for c in range(num_classes) if union[c] > 0]
    return cm, 100 * float(np.mean(iou))


# --- metrics ------------------------------------------------------------------------


def test_confusion_matrix_and_iou_equal_a_hand_count():
    truth = np.array([[0, 0, 1, 1], [2, 2, 1, 255], [0, 2, 2, 255]])
    pred = np.array([[0, 1, 1, 1], [2, 0, 1, 2], [0, 2, 1, 0]])
    cm = confusion_matrix(truth, pred, 3)
    # truth 0 at 3 px: predicted 0, 1, 0; truth 1 at 3 px: 1, 1, 1; truth 2 at 4 px: 2, 0, 2, 1
    hand = [[2, 1, 0], [0, 3, 0], [1, 1, 2]]
    assert cm.tolist() == [*hand, [0, 0, 0]]
    # IoU = TP / (TP + FP + FN): class 0: 2 / (2 + 1 + 1); class 1: 3 / (3 + 2 + 0);
    # class 2: 2 / (2 + 0 + 2)
    assert per_class_iou(cm) == pytest.approx([2 / 4, 3 / 5, 2 / 4])
    stats = summarise(cm)
    assert stats["miou"] == pytest.approx((0.5 + 0.6 + 0.5) / 3)
    assert stats["aacc"] == pytest.approx(7 / 10)  # the two 255 pixels are not counted


def test_unlisted_truth_and_absent_classes_count_as_mmseg_does():
    truth = np.array([0, 0, 7, 7, 255, 1])
    pred = np.array([0, 2, 2, 0, 2, 1])
    cm = confusion_matrix(truth, pred, 4)
    assert cm[4].tolist() == [1, 0, 1, 0]  # truth 7: not a class, not ignored
    # mmseg's intersect_and_union: pred area counts every non-ignored pixel,
    # label area only values in range; class 2 is predicted but never true -> IoU 0;
    # class 3 is neither -> NaN, left out of the mean
    iou = per_class_iou(cm)
    assert iou[0] == pytest.approx(1 / 3)  # TP 1; pred area 2 (one on truth 7); label area 2
    assert iou[1] == 1.0 and iou[2] == 0.0 and np.isnan(iou[3])
    assert summarise(cm)["miou"] == pytest.approx((1 / 3 + 1 + 0) / 3)


def test_reduce_zero_label_and_ignore_index_are_mmsegs(tmp_path):
    raw = np.array([[0, 1, 2], [7, 254, 255]], dtype=np.uint8)
    assert reduce_zero_label(raw).tolist() == [[255, 0, 1], [6, 253, 255]]
    # read with Pillow as mmseg does: a palette PNG yields its indices, not colours
    path = tmp_path / "label.png"
    image = Image.fromarray(raw, mode="P")
    image.putpalette([v for i in range(256) for v in (i, 255 - i, 7)])
    image.save(path)
    assert read_label(path, reduce_zero=False).tolist() == raw.tolist()
    assert read_label(path, reduce_zero=True).tolist() == [[255, 0, 1], [6, 253, 255]]
    cm = confusion_matrix(reduce_zero_label(raw), np.zeros((2, 3), dtype=np.uint8), 7)
    assert cm.sum() == 4  # the former 0 and the 255 are ignored


def test_an_rgb_label_is_refused_with_one_line(tmp_path):
    path = tmp_path / "rgb.png"
    cv2.imwrite(str(path), np.zeros((4, 4, 3), dtype=np.uint8))
    with pytest.raises(UserError, match="one channel of class indices"):
        read_label(path, reduce_zero=False)


# --- presets ------------------------------------------------------------------------

SPEC_TABLE = {  # key: (number of classes, prob_thd, background index)
    "openearthmap": (9, 0.1, 0), "loveda": (7, 0.3, 0), "isaid": (16, 0.4, 0),
    "potsdam": (6, 0.1, 5), "vaihingen": (6, 0.1, 5), "uavid": (7, 0.3, 0), "udd5": (5, 0.4, 4),
    "vdd": (7, 0.3, 0), "whu_aerial": (2, 0.6, 0), "whu_sat_ii": (2, 0.7, 0),
    "inria": (2, 0.6, 0), "xbd": (2, 0.0, 0), "chn6_cug": (2, 0.8, 0), "deepglobe": (2, 0.7, 0),
    "massachusetts": (2, 0.7, 0), "spacenet_roads": (2, 0.7, 0), "wbs_si": (2, 0.6, 0),
}  # fmt: skip
REATTN_REPORTED = {
    "openearthmap": 41.1, "loveda": 37.0, "isaid": 23.2, "potsdam": 48.7, "uavid": 44.0,
    "udd5": 53.7, "vdd": 49.7, "whu_sat_ii": 29.7, "massachusetts": 12.4,
}  # fmt: skip


def test_every_spec_dataset_has_a_valid_preset():
    assert sorted(available()) == sorted(SPEC_TABLE)
    for key, (n, thd, bg) in SPEC_TABLE.items():
        preset = load_preset(key)
        classes = preset.class_list()
        assert (len(classes.synonyms), preset.prob_thd, classes.background_index) == (n, thd, bg)
        assert preset.ignore_index == 255
        assert preset.reported_miou.get("ReAttnCLIP") == REATTN_REPORTED.get(key)
    assert load_preset("LoveDA").reduce_zero_label and load_preset("Potsdam").reduce_zero_label
    assert load_preset("Vaihingen").reduce_zero_label and not load_preset("iSAID").reduce_zero_label
    assert load_preset("WHU-Sat.II").key == "whu_sat_ii"
    assert load_preset("xBD").config == {"lambda_cls": 0.0}
    assert load_preset("loveda").class_list().synonyms[1] == ("building", "roof", "house")
    assert (
        "as reported in the ReAttnCLIP paper; not measured here"
        in (ROOT / "configs/datasets/loveda.yaml").read_text()
    )


@pytest.mark.parametrize(
    "change, needle",
    [
        ({"prob_thd": 2}, "key 'prob_thd'"),
        ({"background_index": 9}, "key 'background_index'"),
        ({"config": {"alfa": 0.3}}, "alfa"),
        ({"config": {"alpha": "x"}}, "'alpha'"),
        ({"layout": {"img_dir": "a"}}, "layout.ann_dir"),
        ({"colour": 1}, "unknown key 'colour'"),
    ],
)
def test_a_bad_preset_names_the_key(tmp_path, change, needle):
    data = yaml.safe_load((ROOT / "configs/datasets/loveda.yaml").read_text()) | change
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(UserError, match=needle):
        load_preset(str(path))


def test_preset_config_yields_to_what_the_user_sets():
    xbd = load_preset("xbd")

    def resolved(**model):
        model = {"method": None, "prob_thd": None, "config_file": None, "sets": ()} | model
        spec = build_model_spec(MODEL_FLAGS | model)
        return with_preset(spec, xbd, model).cfg

    assert (resolved().lambda_cls, resolved().prob_thd) == (0.0, 0.0)
    assert resolved(sets=("lambda_cls=-0.3",)).lambda_cls == -0.3
    assert resolved(prob_thd=0.5).prob_thd == 0.5
    assert load_preset("loveda").prob_thd == 0.3


def test_preset_layout_and_stem_pairing(tmp_path):
    root = tmp_path / "loveDA"
    for sub in ("img_dir/val", "ann_dir/val"):
        (root / sub).mkdir(parents=True)
    for name in ("b", "a"):
        cv2.imwrite(str(root / "img_dir/val" / f"{name}.png"), np.zeros((8, 8, 3), np.uint8))
        cv2.imwrite(str(root / "ann_dir/val" / f"{name}.png"), np.ones((8, 8), np.uint8))
    samples = preset_samples(load_preset("loveda"), root)
    assert [s.name for s in samples] == ["a", "b"]
    assert samples[0].label == root / "ann_dir/val/a.png"
    assert [s.name for s in paired_samples(root / "img_dir/val", root / "ann_dir/val")] == [
        "a",
        "b",
    ]
    (root / "ann_dir/val/b.png").unlink()
    with pytest.raises(UserError, match="no label"):
        preset_samples(load_preset("loveda"), root)
    with pytest.raises(UserError, match="no label named b"):
        paired_samples(root / "img_dir/val", root / "ann_dir/val")
    with pytest.raises(UserError, match="no folder img_dir/val"):
        preset_samples(load_preset("loveda"), tmp_path)


def test_split_file_lists_the_images(tmp_path):
    root = tmp_path / "wbs"
    (root / "Images").mkdir(parents=True)
    (root / "Masks_cvt").mkdir()
    for name in ("water_body_1", "water_body_2"):
        cv2.imwrite(str(root / "Images" / f"{name}.jpg"), np.zeros((8, 8, 3), np.uint8))
        cv2.imwrite(str(root / "Masks_cvt" / f"{name}.jpg"), np.zeros((8, 8), np.uint8))
    with pytest.raises(UserError, match="wbs-si_val.txt"):
        preset_samples(load_preset("wbs_si"), root)
    (root / "wbs-si_val.txt").write_text("water_body_2\n")
    assert [s.name for s in preset_samples(load_preset("wbs_si"), root)] == ["water_body_2"]


def test_shipped_ablation_grid_is_valid():
    spec = build_model_spec(MODEL_FLAGS)
    settings = load_grid(ROOT / "configs/ablations/reattn_components.yaml", spec)
    switches = [(s.spec.cfg.patch_patch, s.spec.cfg.cls_row, s.spec.cfg.cls_col) for s in settings]
    assert [s.name for s in settings] == ["base", "P-P", "CLS", "CLS-Patch", "all"]
    assert switches == [
        ("base", "base", "keep"),
        ("reattn", "base", "keep"),
        ("base", "reattn", "keep"),
        ("base", "base", "zero"),
        ("reattn", "reattn", "zero"),
    ]
    assert settings[-1].reported == {"udd5": 53.7, "vdd": 49.7, "whu_sat_ii": 29.5}


def test_a_bad_grid_row_names_the_setting_and_key(tmp_path):
    spec = build_model_spec(MODEL_FLAGS)
    path = tmp_path / "g.yaml"
    path.write_text("- {name: ok, config: {alpha: 0.5}}\n- {name: bad, config: {cls_col: maybe}}\n")
    with pytest.raises(UserError, match=r"'cls_col'.*setting 2 \(bad\)"):
        load_grid(path, spec)


def test_task_inputs_pickle():
    spec = build_model_spec(MODEL_FLAGS)
    task = ImageTask(load_preset("loveda").class_list(), LabelRules(7, True), 448, True)
    sample = Sample("a", Path("a.png"), Path("b.png"))
    for obj in (task, Setting("s", spec, {}, {}), sample):
        assert pickle.loads(pickle.dumps(obj)) == obj


# --- the command on real labelled samples ---------------------------------------------


def test_loveda_json_miou_equals_one_recomputed_from_the_saved_predictions(tmp_path, capsys):
    """The issue's check: mIoU in R.json == mIoU recomputed from P and the labels."""
    shared_file("labelled/loveda/img/0.png")
    images, labels = LABELLED / "loveda/img", LABELLED / "loveda/ann"
    pred_dir, report = tmp_path / "P", tmp_path / "R.json"
    run_eval(
        "--dataset", "loveda", "--images", images, "--labels", labels, *TINY,
        "--set", "batch_size=3", "--save-predictions", pred_dir, "--json", report,
    )  # fmt: skip
    out = capsys.readouterr().out
    record = json.loads(report.read_text())
    cm, miou = independent_scores(pred_dir, labels, 7, reduce_zero=True)
    assert record["confusion_matrix"] == cm.tolist()
    assert record["miou"] == pytest.approx(miou, abs=1e-9)
    assert record["image_count"] == 3 and record["dataset"]["reduce_zero_label"] is True
    assert record["random_weights"] is True and "NOT accuracy" in record["warning"]
    assert record["weights"]["clip"]["random"] is True
    assert record["config"]["prob_thd"] == 0.3 and record["config"]["batch_size"] == 3
    assert record["classes"]["names"][1] == "building"
    assert record["reported_miou"]["ReAttnCLIP"] == 37.0
    # every labelled (non-zero) pixel is scored, the no-data ones are not
    labelled = sum(int((np.array(Image.open(p)) != 0).sum()) for p in labels.iterdir())
    assert cm.sum() == labelled
    assert "NOT accuracy" in out and "37.00" in out and f"{record['miou']:.2f}" in out


ISPRS_TILES = {"potsdam": "2_10_0_0_512_512.png", "vaihingen": "area1_0_0_512_512.png"}


@pytest.mark.parametrize("name", ["potsdam", "vaihingen"])
def test_isprs_samples_ignore_their_boundary_label(tmp_path, name):
    shared_file(f"labelled/{name}/ann/{ISPRS_TILES[name]}")
    images, labels = LABELLED / name / "img", LABELLED / name / "ann"
    pred_dir, report = tmp_path / "P", tmp_path / "R.json"
    run_eval(
        "--dataset", name, "--images", images, "--labels", labels, *TINY, "--prob-thd", "0",
        "--set", "rotations=[0]", "--set", "rotation_weights=[1.0]", "--set", "batch_size=9",
        "--save-predictions", pred_dir, "--json", report,
    )  # fmt: skip
    record = json.loads(report.read_text())
    cm, miou = independent_scores(pred_dir, labels, 6, reduce_zero=True)
    assert record["confusion_matrix"] == cm.tolist()
    assert record["miou"] == pytest.approx(miou, abs=1e-9)
    raw = np.array(Image.open(next(labels.iterdir())))
    assert cm.sum() == np.count_nonzero(raw)  # 0 = boundary, ignored
    assert cm[5].sum() == np.count_nonzero(raw == 6)  # clutter (absent in these tiles)
    assert record["config"]["prob_thd"] == 0.0  # the user's --prob-thd beats the preset


@pytest.fixture
def small_set(tmp_path) -> tuple[Path, Path]:
    """Two 224 px crops of the real Potsdam tile, run at native size: one crop each."""
    image = cv2.imread(str(shared_file("labelled/potsdam/img/2_10_0_0_512_512.png")))
    label = np.array(Image.open(LABELLED / "potsdam/ann/2_10_0_0_512_512.png"))
    images, labels = tmp_path / "img", tmp_path / "ann"
    images.mkdir()
    labels.mkdir()
    for i, (y, x) in enumerate([(0, 0), (288, 200)]):
        cv2.imwrite(str(images / f"t{i}.png"), image[y : y + 224, x : x + 224])
        Image.fromarray(label[y : y + 224, x : x + 224]).save(labels / f"t{i}.png")
    return images, labels


def test_grid_rows_and_the_base_equality(tmp_path, small_set, capsys):
    """The shipped ablation grid runs as one table; its all-off row equals SegEarth-OV."""
    images, labels = small_set
    rows = yaml.safe_load((ROOT / "configs/ablations/reattn_components.yaml").read_text())
    rows.append({"name": "segearth-ov", "config": {"method": "segearth-ov"}})
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump(rows))
    report, pred_dir = tmp_path / "R.json", tmp_path / "P"
    run_eval(
        "--dataset", "potsdam", "--images", images, "--labels", labels, *TINY,
        "--resize", "none", "--set", "batch_size=1", "--grid", grid, "--json", report,
        "--save-predictions", pred_dir,
    )  # fmt: skip
    out = capsys.readouterr().out
    record = json.loads(report.read_text())
    by_name = {r["setting"]: r for r in record["results"]}
    assert list(by_name) == ["base", "P-P", "CLS", "CLS-Patch", "all", "segearth-ov"]
    assert by_name["base"]["confusion_matrix"] == by_name["segearth-ov"]["confusion_matrix"]
    assert by_name["base"]["confusion_matrix"] != by_name["all"]["confusion_matrix"]
    for name, r in by_name.items():
        cm, miou = independent_scores(pred_dir / name, labels, 6, reduce_zero=True)
        assert r["confusion_matrix"] == cm.tolist() and r["miou"] == pytest.approx(miou)
    assert "miou" not in record  # several settings: figures live per row
    assert "CLS-Patch" in out and "aAcc" in out


def test_dask_scheduler_gives_the_local_result(tmp_path, small_set):
    """Same confusion matrix and predictions on a Dask cluster as locally, and the same
    --report facts: crops counted on the workers (two 224 px images: one crop each),
    model seconds measured there, device, dtype and batch size."""
    from distributed import LocalCluster

    images, labels = small_set
    args = ["--dataset", "potsdam", "--images", images, "--labels", labels, *TINY,
            "--resize", "none", "--set", "batch_size=1"]  # fmt: skip
    run_eval(*args, "--json", tmp_path / "local.json", "--save-predictions", tmp_path / "L",
             "--report", tmp_path / "local-report.json")  # fmt: skip
    with LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0"
    ) as cluster:
        address = cluster.scheduler_address
        run_eval(*args, "--scheduler", address, "--json", tmp_path / "dask.json",
                 "--save-predictions", tmp_path / "D",
                 "--report", tmp_path / "dask-report.json")  # fmt: skip
    reports = [json.loads((tmp_path / f"{n}-report.json").read_text()) for n in ("local", "dask")]
    for report in reports:
        assert report["crops_run"] == 2 and report["images"] == 2, report
        assert (report["device"], report["dtype"], report["batch_size"]) == ("cpu", "fp32", 1)
        seconds = report["seconds"]
        assert seconds["model"] > 0 and seconds["load"] > 0 and seconds["text"] > 0, seconds
        assert seconds["total"] >= seconds["write"], seconds
    local = json.loads((tmp_path / "local.json").read_text())
    dask = json.loads((tmp_path / "dask.json").read_text())
    assert dask["confusion_matrix"] == local["confusion_matrix"]
    assert dask["protocol"]["scheduler"] == address
    for name in ("t0.png", "t1.png"):
        a = cv2.imread(str(tmp_path / "L" / name), cv2.IMREAD_UNCHANGED)
        b = cv2.imread(str(tmp_path / "D" / name), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(a, b)


def test_logits_are_resized_to_a_label_of_another_size(tmp_path, small_set):
    images, labels = small_set
    shutil.rmtree(labels)
    labels.mkdir()
    for i in range(2):
        Image.fromarray(np.full((100, 150), 2, np.uint8)).save(labels / f"t{i}.png")
    run_eval(
        "--classes", "a,b", *TINY, "--set", "batch_size=1", "--images", images,
        "--labels", labels, "--resize", "none",
        "--limit", 1, "--save-predictions", tmp_path / "P", "--json", tmp_path / "R.json",
    )  # fmt: skip
    assert np.array(Image.open(tmp_path / "P/t0.png")).shape == (100, 150)
    record = json.loads((tmp_path / "R.json").read_text())
    assert record["image_count"] == 1 and record["limit"] == 1
    assert np.sum(record["confusion_matrix"]) == 100 * 150
    assert record["classes"]["names"] == ["background", "a", "b"]


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--dataset", "nowhere"], "no such preset"),
        (["--dataset", "loveda"], "nothing to evaluate"),
        (["--dataset", "loveda", "--images", "."], "together"),
        (["--dataset", "loveda", "--data-root", "/nonexistent"], "no such folder"),
        (["--dataset", "loveda", "--classes", "a,b", "--data-root", "."], "labels have 7"),
        (["--classes", "a", "--data-root", "."], "needs --dataset"),
        (["--dataset", "loveda", "--data-root", ".", "--limit", "0"], "--limit 0"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, extra, needle):
    with pytest.raises(SystemExit) as exit_info:
        run_eval(*extra, *TINY)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
