"""Local paths: how two meet, the one test behind every refusal to write onto an input
(a run's store onto its scene, an export onto its store or scene, a job's output root or
summary onto a scene or the spec); and whether a folder is a Zarr store.

Both paths are compared as the file system sees them: ``~`` expanded, symbolic links and
``..`` resolved (a path that does not exist yet resolves as far as it exists), and two
existing paths that are one file (a hard link) are the same path.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

#: The files whose presence makes a folder a Zarr store (format 2: a group, an array,
#: attributes, consolidated metadata; format 3).
ZARR_MARKERS = ("zarr.json", ".zgroup", ".zarray", ".zmetadata", ".zattrs")

#: How ``path`` meets ``other`` (:func:`overlap`): it is ``other``, it holds ``other``
#: (``other`` lies inside the folder ``path``), or it lies inside the folder ``other``.
Overlap = Literal["is", "holds", "lies inside"]


def overlap(path: str | os.PathLike, other: str | os.PathLike) -> Overlap | None:
    """How the local ``path`` meets the local ``other``: ``"is"``, ``"holds"``, ``"lies
    inside"``, or None where neither is, holds or lies inside the other."""
    a = Path(path).expanduser().resolve()
    b = Path(other).expanduser().resolve()
    if a == b or _one_file(a, b):
        return "is"
    if a in b.parents:
        return "holds"
    if b in a.parents:
        return "lies inside"
    return None


def holds_zarr(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` is a folder holding Zarr metadata (:data:`ZARR_MARKERS`)."""
    folder = Path(folder)
    return folder.is_dir() and any((folder / name).exists() for name in ZARR_MARKERS)


def _one_file(a: Path, b: Path) -> bool:
    """Whether two existing paths are one file (a hard link)."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # either is missing or unreadable
        return False
