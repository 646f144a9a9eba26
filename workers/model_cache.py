"""The per-process model cache (SPEC 3.4).

A Dask worker process loads each model once, lazily, on the first task that needs it,
keyed by the ModelSpec fingerprint and the CONTENT of its weights files
(:func:`reattn_batch.workers.model_spec.weights_content_key`), not only their paths: a weights file
replaced at the same path (same size even) gives a new model on a live worker, and the
model of the old content is dropped. Tasks carry only the small spec, never the model.
Text embeddings are computed once per job by ``embed_queries`` (a task of its own)
and handed to every block task.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import Counter

import numpy as np
import torch

from reattn_batch.workers.backbone import Backbone
from reattn_batch.workers.errors import ModelError
from reattn_batch.workers.model_spec import (
    ModelSpec,
    assemble_segmenter,
    load_model_parts,
    weights_content_key,
)
from reattn_batch.workers.segmenter import Segmenter, resolve_device
from reattn_batch.workers.text import query_embeddings

log = logging.getLogger(__name__)

_lock = threading.Lock()
# (spec fingerprint, weights content key) -> the loaded parts / segmenters built on them
_parts: dict[tuple[str, str], tuple[Backbone, torch.nn.Module | None]] = {}
_segmenters: dict[tuple[tuple[str, str], str], Segmenter] = {}
LOADS: Counter[str] = Counter()  # spec fingerprint -> times loaded in this process
_LOAD_ATTEMPTS = 3


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


def _model(spec: ModelSpec) -> tuple[tuple[str, str], tuple[Backbone, torch.nn.Module | None]]:
    """The cache key and the parts of ``spec``, loaded at most once per weights content."""
    key = (spec.fingerprint, weights_content_key(spec))
    with _lock:
        if key in _parts:
            return key, _parts[key]
        for _ in range(_LOAD_ATTEMPTS):
            log.info("loading model %s (%s, %s)", key[0], spec.cfg.method, spec.clip_weights)
            parts = load_model_parts(spec)
            LOADS[spec.fingerprint] += 1
            after = (spec.fingerprint, weights_content_key(spec))
            if after == key:  # the files did not change while they were read
                break
            log.warning("weights of model %s changed while loading: loading again", key[0])
            key = after
        else:
            files = [f for f in (spec.clip_weights, spec.upsampler_weights) if f]
            raise ModelError(
                f"the weights files ({', '.join(files)}) kept changing while they were "
                "loaded: let their copy or download finish, then rerun"
            )
        # a model of the same spec but older content is never used again: free it
        for old in [k for k in _parts if k[0] == key[0]]:
            log.info("weights of model %s changed on disk: dropping the old model", key[0])
            del _parts[old]
        for old in [k for k in _segmenters if k[0][0] == key[0]]:
            del _segmenters[old]
        _parts[key] = parts
        return key, parts


def model_parts(spec: ModelSpec) -> tuple[Backbone, torch.nn.Module | None]:
    """Backbone and upsampler of ``spec``, loaded at most once per process and content."""
    return _model(spec)[1]


def segmenter_for(spec: ModelSpec, queries: np.ndarray) -> Segmenter:
    """The cached Segmenter of ``spec`` with these (Q, D) query embeddings."""
    qkey = hashlib.sha256(np.ascontiguousarray(queries, dtype=np.float32).tobytes()).hexdigest()
    model_key, (backbone, upsampler) = _model(spec)
    key = (model_key, qkey)
    with _lock:
        if key in _segmenters:
            return _segmenters[key]
        embeddings = torch.from_numpy(np.asarray(queries, dtype=np.float32))
        segmenter = assemble_segmenter(spec, (backbone, upsampler), embeddings, worker_device(spec))
        if model_key in _parts:  # not if another thread replaced the model meanwhile
            _segmenters[key] = segmenter
        return segmenter


def embed_queries_timed(spec: ModelSpec, queries: list[str]) -> tuple[np.ndarray, dict[str, float]]:
    """A job's text task: (Q, D) float32 unit text embeddings with this process's cached
    model, and its seconds: ``load`` (the model, from the cache) and ``text``."""
    start = time.perf_counter()
    backbone, _ = model_parts(spec)
    loaded = time.perf_counter()
    with _lock:
        embeddings = query_embeddings(backbone, queries).numpy()
    return embeddings, {"load": loaded - start, "text": time.perf_counter() - loaded}


def embed_queries(spec: ModelSpec, queries: list[str]) -> np.ndarray:
    """(Q, D) float32 unit text embeddings with this process's cached model."""
    return embed_queries_timed(spec, queries)[0]


def load_count(spec_fingerprint: str | None = None) -> int:
    """How many times this process loaded a model (or the given one)."""
    return LOADS[spec_fingerprint] if spec_fingerprint else sum(LOADS.values())
