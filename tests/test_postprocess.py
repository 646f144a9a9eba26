"""Logits -> labels: scale, softmax over queries, max over synonyms, prob_thd (SPEC 2.5)."""

from __future__ import annotations

import math

import pytest
import torch

from reattn_batch.workers.postprocess import class_probabilities, labels_from_logits


def test_synonym_max_after_softmax_over_all_queries_hand_computed():
    # queries: road, parking lot (class 0), building (class 1); one pixel
    logits = torch.tensor([0.20, 0.20, 0.21]).view(3, 1, 1)
    probs = class_probabilities(logits, [0, 0, 1], 2, logit_scale=50)
    e = [math.exp(50 * v) for v in (0.20, 0.20, 0.21)]
    want = [max(e[0], e[1]) / sum(e), e[2] / sum(e)]
    torch.testing.assert_close(probs.view(-1), torch.tensor(want))
    labels, conf = labels_from_logits(logits, [0, 0, 1], 2, 50, 0.0, None)
    # building (0.21) beats each synonym alone, though road + parking lot would sum to more
    assert labels.item() == 1 and conf.item() == pytest.approx(want[1])
    assert 2 * want[0] > want[1]


def test_prob_thd_sends_uncertain_pixels_to_the_background_class():
    logits = torch.tensor([[0.0, 0.0], [0.0, 1.0], [0.0, 0.0]]).view(3, 1, 2)
    # pixel 0: uniform (1/3 each) -> below 0.5 -> background (index 2); pixel 1: certain class 1
    labels, _ = labels_from_logits(logits, [0, 1, 2], 3, 50, 0.5, background_index=2)
    assert labels.view(-1).tolist() == [2, 1]
    labels, _ = labels_from_logits(logits, [0, 1, 2], 3, 50, 0.0, background_index=2)
    assert labels.view(-1).tolist() == [0, 1]  # argmax tie -> first class
    assert labels.dtype == torch.uint8
