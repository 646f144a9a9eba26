"""`segment`: one image through the model, as SegEarth-OV's protocol does it (SPEC 2.7, 4).

read -> optional mmcv-exact resize of the long side -> normalise -> sliding crops ->
mean logits -> bilinear back to the input size -> labels.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from reattn_batch.image.io import read_rgb, rescaled_size, resize_long_side
from reattn_batch.report import Clock, TimedSegmenter, model_facts
from reattn_batch.workers.classes import ClassList
from reattn_batch.workers.model_spec import ModelSpec, assemble_segmenter, load_model_parts
from reattn_batch.workers.postprocess import labels_from_logits
from reattn_batch.workers.segmenter import Segmenter, normalise
from reattn_batch.workers.sliding import crop_grid, slide_inference
from reattn_batch.workers.text import query_embeddings

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Segmentation:
    """logits: (Q, H, W) float32 mean raw crop logits; labels: (H, W) uint8; H, W = input size."""

    logits: np.ndarray
    labels: np.ndarray


def model_input(rgb: np.ndarray, long_side: int | None) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (3, h, w) normalised model input (long side resized)."""
    return normalise(resize_long_side(rgb, long_side) if long_side else rgb)


def finish_segmentation(
    segmenter: Segmenter, classes: ClassList, logits: torch.Tensor, size: tuple[int, int]
) -> Segmentation:
    """(Q, h, w) mean crop logits -> Segmentation at the input ``size`` (H, W)."""
    if logits.shape[-2:] != size:
        logits = F.interpolate(logits[None], size=size, mode="bilinear")[0]
    cfg = segmenter.cfg
    labels, _ = labels_from_logits(
        logits,
        classes.query_class,
        len(classes.synonyms),
        cfg.logit_scale,
        cfg.prob_thd,
        classes.background_index,
    )
    return Segmentation(logits=logits.cpu().numpy().astype(np.float32), labels=labels.cpu().numpy())


def segment_array(
    segmenter: Segmenter, classes: ClassList, rgb: np.ndarray, long_side: int | None
) -> Segmentation:
    """(H, W, 3) uint8 RGB -> Segmentation at the input size."""
    logits = slide_inference(segmenter, model_input(rgb, long_side))
    return finish_segmentation(segmenter, classes, logits, rgb.shape[:2])


@torch.no_grad()
def segment_file(
    path: Path,
    spec: ModelSpec,
    classes: ClassList,
    long_side: int | None,
    clock: Clock | None = None,
) -> Segmentation:
    """Segment the image at ``path``; ``clock`` (--report) gets the load, text and model
    seconds and, in ``clock.facts``, the crops run, device, dtype and batch size."""
    clock = clock or Clock()
    with clock.phase("load"):
        rgb = read_rgb(path)
        parts = load_model_parts(spec)
    with clock.phase("text"):
        queries = query_embeddings(parts[0], classes.queries)
    with clock.phase("load"):
        segmenter = assemble_segmenter(spec, parts, queries)
    timed = TimedSegmenter(segmenter)
    log.info(
        "segmenting %s (%dx%d) with %s on %s, %d queries",
        path,
        rgb.shape[1],
        rgb.shape[0],
        spec.cfg.method,
        segmenter.device,
        segmenter.num_queries,
    )
    result = segment_array(timed, classes, rgb, long_side)
    clock.add("model", timed.model_seconds)
    model_h, model_w = rescaled_size(*rgb.shape[:2], long_side) if long_side else rgb.shape[:2]
    crops = len(crop_grid(model_h, model_w, spec.cfg.crop, spec.cfg.stride))
    clock.facts = {"crops_run": crops, **model_facts(segmenter)}
    return result
