"""The disk cache of text embeddings: a damaged file is computed again, not a traceback."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from reattn_batch.workers.backbone import load_backbone
from reattn_batch.workers.text import _cache_file, query_embeddings

QUERIES = ["road"]


@pytest.fixture(scope="module")
def backbone():
    return load_backbone("random", "ViT-T-16-test", seed=3)


@pytest.fixture(scope="module")
def fresh(backbone) -> torch.Tensor:
    return query_embeddings(backbone, QUERIES, use_cache=False)


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage", "wrong shape", "nan"])
def test_damaged_cache_file_is_recomputed(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    backbone,
    fresh: torch.Tensor,
    damage: str,
) -> None:
    monkeypatch.setenv("REATTN_BATCH_CACHE", str(tmp_path))
    assert torch.equal(query_embeddings(backbone, QUERIES), fresh)  # fills the cache
    path = _cache_file(backbone, "road")
    good = path.read_bytes()
    if damage == "empty":
        path.write_bytes(b"")
    elif damage == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00" * len(good))
    elif damage == "wrong shape":
        np.save(path, np.ones((2, 3), dtype=np.float32))
    else:
        np.save(path, np.full(fresh.shape[1], np.nan, dtype=np.float32))

    with caplog.at_level(logging.WARNING, logger="reattn_batch.workers.text"):
        got = query_embeddings(backbone, QUERIES)
    assert torch.equal(got, fresh)
    assert any(str(path) in r.getMessage() for r in caplog.records)
    assert path.read_bytes() == good  # rewritten
