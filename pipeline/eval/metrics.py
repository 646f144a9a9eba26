"""Segmentation metrics as mmseg's IoUMetric computes them (SPEC 4); numpy only.

Everything derives from one count matrix ``cm`` of shape (C + 1, C), int64:

- ``cm[t, p]`` for t, p in 0..C-1: pixels whose ground truth is class t and whose
  prediction is class p (the confusion matrix, rows = truth, columns = prediction);
- ``cm[C, p]``: pixels predicted p whose ground truth is outside 0..C-1 but is not the
  ignore index. mmseg counts such pixels in the predicted area of p (so they lower
  p's IoU) but in no class's label area; the extra row keeps that, exactly.

Pixels whose ground truth equals the ignore index are not counted at all.
Per-class IoU = TP / (TP + FP + FN); a class with no truth and no prediction has
IoU NaN and is left out of the mean (``nanmean``), as in mmseg. aAcc = sum(TP) /
(labelled pixels of the listed classes). Values are fractions; callers print percent.
"""

from __future__ import annotations

import numpy as np


def confusion_matrix(
    truth: np.ndarray, pred: np.ndarray, num_classes: int, ignore_index: int = 255
) -> np.ndarray:
    """truth, pred: (H, W) integer arrays of one image -> (C + 1, C) int64 counts.

    ``pred`` must hold class indices 0..C-1 only; ``truth`` may hold anything, see the
    module docstring for the extra row and the ignore index.
    """
    if truth.shape != pred.shape:
        raise ValueError(f"truth {truth.shape} and prediction {pred.shape} differ in shape")
    c = num_classes
    t = truth.astype(np.int64, copy=False).ravel()
    p = pred.astype(np.int64, copy=False).ravel()
    if p.size and (p.min() < 0 or p.max() >= c):
        raise ValueError(f"prediction holds values outside 0..{c - 1}")
    keep = t != ignore_index
    t, p = t[keep], p[keep]
    t = np.where((t >= 0) & (t < c), t, c)  # unlisted truth -> the extra row
    counts = np.bincount(t * c + p, minlength=(c + 1) * c)
    return counts.reshape(c + 1, c)


def per_class_iou(cm: np.ndarray) -> np.ndarray:
    """(C + 1, C) counts -> (C,) float64 IoU, NaN where a class has no truth and no prediction."""
    tp = np.diag(cm[:-1]).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)  # includes the unlisted-truth row
    labelled = cm[:-1].sum(axis=1).astype(np.float64)
    union = predicted + labelled - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, tp / np.where(union > 0, union, 1), np.nan)


def per_class_accuracy(cm: np.ndarray) -> np.ndarray:
    """(C + 1, C) counts -> (C,) float64 recall TP / labelled, NaN for an absent class."""
    tp = np.diag(cm[:-1]).astype(np.float64)
    labelled = cm[:-1].sum(axis=1).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(labelled > 0, tp / np.where(labelled > 0, labelled, 1), np.nan)


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")


def summarise(cm: np.ndarray) -> dict[str, object]:
    """(C + 1, C) counts -> {"iou": (C,), "acc": (C,), "miou", "macc", "aacc"} as fractions."""
    iou, acc = per_class_iou(cm), per_class_accuracy(cm)
    labelled = cm[:-1].sum()
    aacc = float(np.trace(cm[:-1]) / labelled) if labelled else float("nan")
    return {
        "iou": iou,
        "acc": acc,
        "miou": _nanmean(iou),
        "macc": _nanmean(acc),
        "aacc": aacc,
    }
