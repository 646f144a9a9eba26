"""Shared fixtures: where the real test data lives, and an isolated cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_file(relative: str) -> Path:
    """A file under ../shared/data, or skip the test with a reason."""
    path = SHARED_DATA / relative
    if not path.is_file():
        pytest.skip(f"real test data {relative} not found under {SHARED_DATA} (../shared absent)")
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Text embeddings and downloads go to a per-session temporary cache."""
    monkeypatch.setenv("REATTN_BATCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


# Dask's INFO chatter drowns test failures; read when distributed is imported.
os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
