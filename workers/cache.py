"""The project's cache folder: default weights, text embeddings, ... each in a subfolder."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "REATTN_BATCH_CACHE"


def cache_root() -> Path:
    """$REATTN_BATCH_CACHE, else $XDG_CACHE_HOME/reattn-batch, else ~/.cache/reattn-batch
    (``~`` expanded)."""
    if env := os.environ.get(CACHE_ENV):
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "reattn-batch"
