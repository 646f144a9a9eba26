"""The store's group attributes: JSON-clean values, reading, and the driver's updates."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from reattn_batch.workers.describe import one_line
from reattn_batch.workers.errors import StoreError


def jsonable(value: Any) -> Any:
    """numpy scalars/arrays, tuples, sets and paths -> plain JSON types (recursively)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, set | frozenset):
        return [jsonable(v) for v in sorted(value, key=str)]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def checked_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    out = jsonable(attrs)
    try:
        json.dumps(out, allow_nan=True)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"store attributes must be JSON-serialisable: {exc}") from None
    return out


#: What damaged store metadata raises while it is parsed (JSON, zarr's metadata models,
#: numbers in the attributes) or read (I/O).
DAMAGED = (OSError, ValueError, TypeError, KeyError)


def damaged(root: Path, part: str, exc: BaseException) -> StoreError:
    """The one line for a store whose metadata ``part`` (a file, or what was being read)
    failed to parse or read with ``exc``."""
    return StoreError(
        f"{root}: the label store's metadata is damaged ({part}: {one_line(exc)}); "
        "map the scene into a new store"
    )


def update_attrs(path: str | os.PathLike, **attrs: Any) -> None:
    """Merge ``attrs`` into the group attributes and refresh the consolidated metadata.

    Call from one process at a time (the job's driver): the update is read-modify-write.
    """
    root = Path(path)
    if not (root / ".zgroup").exists():
        raise StoreError(f"{root} is not a label store (no .zgroup); check the path")
    new = checked_attrs(attrs)
    group = zarr.open_group(str(root), mode="r+", zarr_format=2, use_consolidated=False)
    group.update_attributes(new)  # one write of .zattrs (attrs.update writes once per key)
    zarr.consolidate_metadata(str(root))


def read_attrs(path: str | os.PathLike) -> dict[str, Any]:
    """The group attributes as a plain dict (read from .zattrs, not the consolidated copy)."""
    root = Path(path)
    if not (root / ".zgroup").exists():
        raise StoreError(f"{root} is not a label store (no .zgroup); check the path")
    try:
        group = zarr.open_group(str(root), mode="r", zarr_format=2, use_consolidated=False)
        return dict(group.attrs.asdict())
    except DAMAGED as exc:  # not JSON, not a mapping...
        raise damaged(root, ".zattrs/.zgroup", exc) from None
