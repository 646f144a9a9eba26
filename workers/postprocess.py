"""From mean logits to labels (SPEC 2.5): scale, softmax over all queries, class
probability = max over its synonyms, argmax; below prob_thd -> the background class."""

from __future__ import annotations

import torch
from torch import Tensor


def class_probabilities(
    logits: Tensor, query_class: list[int], num_classes: int, logit_scale: float
) -> Tensor:
    """logits (Q, ...) -> (C, ...) probabilities: softmax over queries, max over synonyms."""
    probs = torch.softmax(logits.float() * logit_scale, dim=0)
    if len(query_class) == num_classes:
        return probs
    index = torch.tensor(query_class, device=probs.device)
    return torch.stack([probs[index == c].amax(dim=0) for c in range(num_classes)])


def labels_from_logits(
    logits: Tensor,
    query_class: list[int],
    num_classes: int,
    logit_scale: float,
    prob_thd: float,
    background_index: int | None,
) -> tuple[Tensor, Tensor]:
    """logits (Q, H, W) -> (labels (H, W) uint8, confidence (H, W) float32 max class prob)."""
    probs = class_probabilities(logits, query_class, num_classes, logit_scale)
    confidence, labels = probs.max(dim=0)
    if prob_thd > 0 and background_index is not None:
        labels = torch.where(confidence < prob_thd, background_index, labels)
    return labels.to(torch.uint8), confidence
