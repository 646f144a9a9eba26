"""The per-process model cache (SPEC 3.4).

A Dask worker process loads each model once, lazily, on the first task that needs it,
keyed by the ModelSpec fingerprint; tasks carry only the small spec, never the model.
Text embeddings are computed once per job by ``embed_queries`` (a task of its own)
and handed to every block task.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import Counter

import numpy as np
import torch

from workers.backbone import Backbone
from workers.model_spec import ModelSpec, load_model_parts
from workers.segmenter import CropSegmenter, resolve_device
from workers.text import query_embeddings

log = logging.getLogger(__name__)

_lock = threading.Lock()
_parts: dict[str, tuple[Backbone, torch.nn.Module | None]] = {}
_segmenters: dict[tuple[str, str], CropSegmenter] = {}
LOADS: Counter[str] = Counter()  # model fingerprint -> times loaded in this process


def worker_device(spec: ModelSpec) -> torch.device:
    """The spec's device; on a multi-GPU host, a worker named N takes GPU N mod count."""
    device = resolve_device(spec.device)
    if device.type == "cuda" and device.index is None and torch.cuda.device_count() > 1:
        try:
            from distributed import get_worker

            name = get_worker().name
            if isinstance(name, int) or str(name).isdigit():
                return torch.device("cuda", int(name) % torch.cuda.device_count())
        except ValueError:  # not inside a worker
            pass
    return device


def model_parts(spec: ModelSpec) -> tuple[Backbone, torch.nn.Module | None]:
    """Backbone and upsampler of ``spec``, loaded at most once per process."""
    key = spec.fingerprint
    with _lock:
        if key not in _parts:
            log.info("loading model %s (%s, %s)", key, spec.cfg.method, spec.clip_weights)
            _parts[key] = load_model_parts(spec)
            LOADS[key] += 1
        return _parts[key]


def segmenter_for(spec: ModelSpec, queries: np.ndarray) -> CropSegmenter:
    """The cached CropSegmenter of ``spec`` with these (Q, D) query embeddings."""
    qkey = hashlib.sha256(np.ascontiguousarray(queries, dtype=np.float32).tobytes()).hexdigest()
    key = (spec.fingerprint, qkey)
    backbone, upsampler = model_parts(spec)
    with _lock:
        if key not in _segmenters:
            _segmenters[key] = CropSegmenter(
                backbone=backbone,
                cfg=spec.cfg,
                queries=torch.from_numpy(np.asarray(queries, dtype=np.float32)),
                upsampler=upsampler,
                device=worker_device(spec),
            )
        return _segmenters[key]


def embed_queries(spec: ModelSpec, queries: list[str]) -> np.ndarray:
    """(Q, D) float32 unit text embeddings with this process's cached model."""
    backbone, _ = model_parts(spec)
    with _lock:
        return query_embeddings(backbone, queries).numpy()


def load_count(spec_fingerprint: str | None = None) -> int:
    """How many times this process loaded a model (or the given one)."""
    return LOADS[spec_fingerprint] if spec_fingerprint else sum(LOADS.values())
