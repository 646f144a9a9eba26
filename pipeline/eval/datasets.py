"""Benchmark dataset presets (configs/datasets/*.yaml), label reading and image/label pairs.

A preset names a dataset's classes (with synonyms, in label order), its prob_thd,
background index, label semantics (reduce_zero_label, ignore index), the directory
layout that SegEarth-OV's mmseg-style dataset preparation produces, per-dataset
method overrides (``config:``) and the figures the ReAttnCLIP paper reports. Every
error names the preset file and the key.

Labels are read as mmseg's LoadAnnotations reads them (Pillow, unchanged: a palette
PNG gives its indices), and ``reduce_zero_label`` is mmseg's: 0 -> 255 (ignored),
every other value minus 1, 255 stays 255.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from reattn_batch.workers.classes import ClassList, build_class_list
from reattn_batch.workers.config import CONFIG_DIR, build_config, load_config, read_yaml
from reattn_batch.workers.errors import InputError, UserError

DATASETS_DIR = CONFIG_DIR / "datasets"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where images and labels lie under a data root (mmseg's data_prefix and suffixes)."""

    img_dir: str
    ann_dir: str
    img_suffix: str
    seg_map_suffix: str
    split_file: str | None = None  # stems, one a line, relative to the data root


@dataclasses.dataclass(frozen=True)
class DatasetPreset:
    """One configs/datasets/<key>.yaml, validated."""

    key: str
    path: Path
    name: str
    classes: tuple[str, ...]  # "name/synonym/..." in label order
    background_index: int
    prob_thd: float
    reduce_zero_label: bool
    ignore_index: int
    label_format: str
    layout: Layout
    config: Mapping[str, Any]  # method config keys this dataset overrides
    reported_miou: Mapping[str, float]  # method -> mIoU (percent) as the paper reports it
    notes: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def class_list(self) -> ClassList:
        """The preset's classes, no background added; background = the preset's index."""
        groups = [[s.strip() for s in entry.split("/")] for entry in self.classes]
        classes = build_class_list(groups, add_background=False)
        return dataclasses.replace(classes, background_index=self.background_index)

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["path"] = str(self.path)
        out["classes"] = list(self.classes)
        out["config"] = dict(self.config)
        out["reported_miou"] = dict(self.reported_miou)
        return out


def normalise_key(name: str) -> str:
    """ "WHU-Sat.II" -> "whu_sat_ii": the form preset file names use."""
    return re.sub(r"[^0-9a-z]+", "_", name.casefold()).strip("_")


def available() -> list[str]:
    """Keys of the shipped presets."""
    return sorted(p.stem for p in DATASETS_DIR.glob("*.yaml"))


def find_preset(name: str) -> Path:
    """A shipped preset by (loose) name, or a YAML file path."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    key = normalise_key(name)
    candidate = DATASETS_DIR / f"{key}.yaml"
    if candidate.is_file():
        return candidate
    raise InputError(
        f"dataset={name!r}: no such preset; known: {', '.join(available())} "
        "(or pass the path of a preset YAML file)"
    )


def _expect(ok: bool, where: str, key: str, what: str, value: Any) -> None:
    if not ok:
        raise InputError(f"{where}: key '{key}': expected {what}, got {value!r}")


def _layout(raw: Any, where: str) -> Layout:
    _expect(isinstance(raw, dict), where, "layout", "a mapping", raw)
    fields = [f.name for f in dataclasses.fields(Layout)]
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise InputError(f"{where}: unknown key 'layout.{unknown[0]}'; known: {', '.join(fields)}")
    values = {}
    for field in ("img_dir", "ann_dir", "img_suffix", "seg_map_suffix"):
        value = raw.get(field)
        _expect(isinstance(value, str) and value, where, f"layout.{field}", "a string", value)
        values[field] = value
    split = raw.get("split_file")
    _expect(split is None or isinstance(split, str), where, "layout.split_file", "a path", split)
    return Layout(**values, split_file=split)


_REQUIRED = (
    "name", "classes", "background_index", "prob_thd", "reduce_zero_label", "ignore_index",
    "label_format", "layout", "reported_miou",
)  # fmt: skip
_OPTIONAL = ("config", "notes")


def load_preset(name: str) -> DatasetPreset:
    """Read and validate a preset; errors name the file and the key."""
    path = find_preset(name)
    where = f"dataset preset {path}"
    raw = read_yaml(path, "dataset preset")
    if not isinstance(raw, dict):
        raise InputError(f"{where}: expected a mapping of key: value")
    unknown = sorted(set(raw) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        raise InputError(f"{where}: unknown key '{unknown[0]}'; known: {', '.join(_REQUIRED)}")
    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        raise InputError(f"{where}: key '{missing[0]}' is missing")

    classes = raw["classes"]
    _expect(
        isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes),
        where, "classes", 'a list of "name/synonym" strings', classes,
    )  # fmt: skip
    n = len(classes)
    bg = raw["background_index"]
    _expect(isinstance(bg, int) and 0 <= bg < n, where, "background_index", f"0..{n - 1}", bg)
    thd = raw["prob_thd"]
    _expect(
        isinstance(thd, int | float) and not isinstance(thd, bool) and 0 <= thd <= 1,
        where, "prob_thd", "a number in [0, 1]", thd,
    )  # fmt: skip
    rzl = raw["reduce_zero_label"]
    _expect(isinstance(rzl, bool), where, "reduce_zero_label", "true or false", rzl)
    ignore = raw["ignore_index"]
    _expect(
        isinstance(ignore, int) and not isinstance(ignore, bool) and n <= ignore <= 255,
        where, "ignore_index", f"an integer in {n}..255", ignore,
    )  # fmt: skip
    fmt = raw["label_format"]
    _expect(isinstance(fmt, str) and fmt, where, "label_format", "a description", fmt)
    reported = raw["reported_miou"] or {}
    _expect(
        isinstance(reported, dict)
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in reported.values()),
        where, "reported_miou", "a mapping of method: mIoU (percent)", reported,
    )  # fmt: skip
    config = raw.get("config") or {}
    _expect(isinstance(config, dict), where, "config", "a mapping of config keys", config)
    # unknown keys and bad values are refused here, naming the key
    build_config({**load_config().as_dict(), **config}, source=f"{where}, key 'config'")
    notes = raw.get("notes") or ""
    preset = DatasetPreset(
        key=path.stem,
        path=path,
        name=str(raw["name"]),
        classes=tuple(classes),
        background_index=bg,
        prob_thd=float(thd),
        reduce_zero_label=rzl,
        ignore_index=ignore,
        label_format=fmt,
        layout=_layout(raw["layout"], where),
        config=dict(config),
        reported_miou={str(k): float(v) for k, v in reported.items()},
        notes=str(notes),
    )
    try:
        preset.class_list()
    except UserError as exc:
        raise InputError(f"{where}: key 'classes': {exc}") from None
    return preset


# --- labels -------------------------------------------------------------------------


def reduce_zero_label(label: np.ndarray) -> np.ndarray:
    """mmseg's reduce_zero_label on a (H, W) uint8 label: 0 -> 255, others - 1, 255 kept."""
    out = label.astype(np.uint8, copy=True)
    out[out == 0] = 255
    out = out - np.uint8(1)
    out[out == 254] = 255
    return out


def read_label(path: str | Path, reduce_zero: bool) -> np.ndarray:
    """A label image -> (H, W) uint8 class indices (Pillow, unchanged, as mmseg reads them)."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            label = np.array(image)
    except FileNotFoundError:
        raise InputError(f"{path}: no such label file") from None
    except OSError as exc:
        raise InputError(f"{path}: not a readable label image ({exc})") from None
    if label.ndim != 2:
        raise InputError(
            f"{path}: label has shape {label.shape}; expected one channel of class indices "
            "(convert colour-coded labels with the dataset's converter first)"
        )
    if label.dtype != np.uint8:
        if label.size and (label.min() < 0 or label.max() > 255):
            raise InputError(f"{path}: label values outside 0..255; expected uint8 class indices")
        label = label.astype(np.uint8)
    return reduce_zero_label(label) if reduce_zero else label


# --- image / label pairs --------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Sample:
    """One evaluation pair; ``name`` (relative, no suffix) names its saved prediction."""

    name: str
    image: Path
    label: Path


def _has_suffix(path: Path, suffix: str) -> bool:
    return path.name.casefold().endswith(suffix.casefold())


def preset_samples(preset: DatasetPreset, data_root: Path) -> list[Sample]:
    """Pairs under ``data_root`` in the preset's layout, sorted as mmseg lists them."""
    layout = preset.layout
    if not data_root.is_dir():
        raise InputError(f"data_root={data_root}: no such folder")
    img_root, ann_root = data_root / layout.img_dir, data_root / layout.ann_dir
    for folder, key in ((img_root, "img_dir"), (ann_root, "ann_dir")):
        if not folder.is_dir():
            raise InputError(
                f"data_root={data_root}: no folder {getattr(layout, key)} ({preset.name} "
                f"layout.{key} in {preset.path.name}); expected the layout of SegEarth-OV's "
                "dataset preparation, or pass images=DIR labels=DIR"
            )
    if layout.split_file is not None:
        split = data_root / layout.split_file
        if not split.is_file():
            raise InputError(
                f"{split}: the {preset.name} split file (layout.split_file) is missing; "
                "put the list of evaluation image names there"
            )
        stems = [line.strip() for line in split.read_text().splitlines() if line.strip()]
        pairs = [(stem, img_root / f"{stem}{layout.img_suffix}") for stem in stems]
    else:
        n = len(layout.img_suffix)
        pairs = sorted(
            (str(p.relative_to(img_root))[:-n], p)
            for p in img_root.rglob("*")
            if p.is_file() and _has_suffix(p, layout.img_suffix)
        )
    samples = []
    for stem, image in pairs:
        label = ann_root / f"{stem}{layout.seg_map_suffix}"
        if not image.is_file():
            raise InputError(f"{image}: listed in {layout.split_file} but no such image")
        if not label.is_file():
            raise InputError(f"{image}: no label {label} ({preset.name} layout.seg_map_suffix)")
        samples.append(Sample(name=stem, image=image, label=label))
    if not samples:
        raise InputError(f"{img_root}: no images ending in {layout.img_suffix}")
    return samples


def _images_in(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.casefold() in IMAGE_EXTENSIONS
    )


def paired_samples(images: Path, labels: Path, seg_map_suffix: str | None = None) -> list[Sample]:
    """``images=DIR labels=DIR``: each image paired with the label of the same stem
    (relative path without suffix), or with stem + ``seg_map_suffix`` where given."""
    for folder, option in ((images, "`images`"), (labels, "`labels`")):
        if not folder.is_dir():
            raise InputError(f"{option} {folder}: no such folder")
    by_stem: dict[str, list[Path]] = {}
    for path in _images_in(labels):
        by_stem.setdefault(str(path.relative_to(labels).with_suffix("")), []).append(path)
    samples = []
    for image in _images_in(images):
        stem = str(image.relative_to(images).with_suffix(""))
        if seg_map_suffix and (labels / f"{stem}{seg_map_suffix}").is_file():
            label = labels / f"{stem}{seg_map_suffix}"
        else:
            found = by_stem.get(stem, [])
            if len(found) != 1:
                why = "no label" if not found else f"{len(found)} labels"
                raise InputError(
                    f"{image}: {why} named {stem}.* in labels={labels}; "
                    "images and labels are paired by file name without its suffix"
                )
            label = found[0]
        samples.append(Sample(name=stem, image=image, label=label))
    if not samples:
        raise InputError(f"images={images}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    return samples


def select_samples(
    preset: DatasetPreset | None,
    *,
    data_root: Path | None,
    images: Path | None,
    labels: Path | None,
    limit: int | None,
) -> list[Sample]:
    """The samples of `data_root` (in the preset's layout) or `images`/`labels`."""

    if limit is not None and limit < 1:
        raise InputError(f"limit={limit}: must be at least 1")
    if (images is None) != (labels is None):
        raise InputError("pass images=DIR and labels=DIR together")
    if images is not None and data_root is not None:
        raise InputError("pass data_root=DIR or images=DIR labels=DIR, not both")
    if images is not None:
        suffix = preset.layout.seg_map_suffix if preset else None
        samples = paired_samples(images, labels, suffix)
    elif data_root is not None:
        if preset is None:
            raise InputError(
                "`data_root` needs dataset=NAME (for its layout); or pass `images`/`labels`"
            )
        samples = preset_samples(preset, data_root)
    else:
        raise InputError("nothing to evaluate: pass data_root=DIR, or images=DIR labels=DIR")
    return samples if limit is None else samples[:limit]
