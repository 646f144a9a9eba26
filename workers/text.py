"""Text query embeddings (SPEC 2.5), cached on disk.

A query's embedding is the mean over open_clip's 80 OpenAI ImageNet templates of the
L2-normalised text features, re-normalised. Embeddings are cached as .npy files keyed
by the model's weight identity, the template set and the query text, so a job (or a
later job) computes each query once.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import open_clip
import torch
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

from reattn_batch.workers.backbone import Backbone
from reattn_batch.workers.environment import cache_root

log = logging.getLogger(__name__)

TEMPLATES = OPENAI_IMAGENET_TEMPLATES
_TEMPLATE_KEY = hashlib.sha256("\n".join(t("{}") for t in TEMPLATES).encode()).hexdigest()[:16]


def _cache_file(backbone: Backbone, query: str) -> Path:
    key = hashlib.sha256(f"{backbone.identity.key}|{_TEMPLATE_KEY}|{query}".encode()).hexdigest()
    return cache_root() / "text" / f"{key}.npy"


@torch.no_grad()
def embed_query(backbone: Backbone, query: str) -> np.ndarray:
    """One query -> (D,) float32 unit vector (mean of normalised template features)."""
    tokenizer = open_clip.get_tokenizer(backbone.clip_model)
    model = backbone.model
    device = next(model.parameters()).device
    tokens = tokenizer([template(query) for template in TEMPLATES]).to(device)
    features = model.encode_text(tokens).float()
    features = features / features.norm(dim=-1, keepdim=True)
    mean = features.mean(dim=0)
    return (mean / mean.norm()).cpu().numpy().astype(np.float32)


def query_embeddings(
    backbone: Backbone, queries: Sequence[str], use_cache: bool = True
) -> torch.Tensor:
    """(Q, D) float32 unit vectors, one row per query, from the disk cache where present."""
    rows = []
    for query in queries:
        path = _cache_file(backbone, query)
        if use_cache and path.is_file():
            cached = _read_cached(path, _embed_dim(backbone))
            if cached is not None:
                rows.append(cached)
                continue
        row = embed_query(backbone, query)
        if use_cache:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npy.tmp")
            with os.fdopen(fd, "wb") as f:
                np.save(f, row)
            os.replace(tmp, path)
        rows.append(row)
    return torch.from_numpy(np.stack(rows))


def _embed_dim(backbone: Backbone) -> int | None:
    proj = getattr(backbone.model, "text_projection", None)
    return int(proj.shape[-1]) if isinstance(proj, torch.Tensor) else None


def _read_cached(path: Path, dim: int | None) -> np.ndarray | None:
    """A cached (D,) float32 unit embedding, or None (with a warning) when the file is
    unreadable, truncated or holds anything else; the caller then computes it again."""
    try:
        row = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        problem = f"unreadable ({type(e).__name__})"
    else:
        ok = (
            isinstance(row, np.ndarray)
            and row.dtype == np.float32
            and row.ndim == 1
            and (dim is None or row.shape[0] == dim)
            and bool(np.isfinite(row).all())
            and abs(float(np.linalg.norm(row)) - 1.0) < 1e-3
        )
        if ok:
            return row
        problem = "not a unit float32 embedding of this model"
    log.warning("text embedding cache file %s is %s: computing it again", path, problem)
    return None
