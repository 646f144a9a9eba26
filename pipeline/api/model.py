"""``load_model``: the Segmenter from Python keywords, validated like the CLI's flags."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from reattn_batch.settings import MODEL_KEYS, ModelSettings, from_keywords
from reattn_batch.workers.backbone import Backbone
from reattn_batch.workers.classes import ClassList, parse_classes
from reattn_batch.workers.model_spec import ModelSpec, assemble_segmenter, load_model_parts
from reattn_batch.workers.segmenter import Segmenter
from reattn_batch.workers.text import query_embeddings


def model_spec(config_file: str | Path | None = None, **keywords: Any) -> ModelSpec:
    """The ModelSpec of ``load_model``'s keywords: ModelSettings fields, ``config_file``
    (a YAML of method.yaml keys) and any method.yaml key; errors name the keyword."""
    settings = {k: keywords.pop(k) for k in MODEL_KEYS if k in keywords}
    if config_file is not None:
        settings["config"] = Path(config_file)
    return from_keywords(ModelSettings, settings).model_spec(keys=keywords)


def class_list(classes: str | Sequence[str] | ClassList, background: bool = True) -> ClassList:
    """``classes`` as the CLI's ``--classes`` text ("road/parking lot,building"), a list of
    class names (each may hold "/"-joined synonyms) or a ClassList; a "background" class
    first unless ``background`` is False or one is named."""
    if isinstance(classes, ClassList):
        return classes
    text = classes if isinstance(classes, str) else ",".join(str(c) for c in classes)
    return parse_classes(text, None, background)


def load_model(
    method: str | None = None,
    clip_weights: str = "openai",
    upsampler: str = "jbu_one",
    upsampler_weights: str | None = None,
    device: str = "auto",
    *,
    classes: str | Sequence[str] | ClassList | None = None,
    **config: Any,
) -> Segmenter:
    """The model as a ``torch.nn.Module`` (:class:`~reattn_batch.Segmenter`), on ``device``.

    method: one of ``reattn_batch.METHODS`` (default: configs/method.yaml's, reattnclip).
    clip_weights: ``openai`` (needs internet once), a checkpoint path, or ``random``
    (tests only: its outputs mean nothing). upsampler: ``jbu_one`` | ``jbu_stack`` |
    ``bilinear``, with ``upsampler_weights`` a checkpoint path (jbu_one's default is
    downloaded and cached). device: ``auto`` | ``cpu`` | ``cuda``. ``config_file`` (a YAML
    of method.yaml keys) and every method.yaml key (``alpha=0.3``, ``crop=224``, ...) are
    accepted as keywords and validated. ``classes`` embeds the text queries now; else
    :func:`reattn_batch.segment` embeds the classes it is given.
    Errors: :class:`~reattn_batch.InputError` naming the keyword, or
    :class:`~reattn_batch.ModelError`.
    """
    spec = model_spec(
        method=method, clip_weights=clip_weights, upsampler=upsampler,
        upsampler_weights=upsampler_weights, device=device, **config,
    )  # fmt: skip
    parts = load_model_parts(spec)
    segmenter = assemble_segmenter(spec, parts, no_queries(parts[0]))
    if classes is not None:
        use_classes(segmenter, class_list(classes))
    return segmenter


def no_queries(backbone: Backbone) -> torch.Tensor:
    """(0, D): the queries of a model that has not been given classes yet."""
    return torch.zeros(0, int(backbone.model.visual.proj.shape[1]))


def use_classes(segmenter: Segmenter, classes: ClassList) -> None:
    """Embed ``classes``' text queries (disk-cached) into ``segmenter`` unless it holds
    them already; ``segmenter.classes`` records which."""
    if getattr(segmenter, "classes", None) == classes:
        return
    segmenter.set_queries(query_embeddings(segmenter.backbone, classes.queries))
    segmenter.classes = classes
