"""Where a regional job writes, checked before it writes anything: its output root (one
store per scene, ``index.json``/``index.geojson``, ``summary.json`` and the job lock) and
the summary file. Errors are InputErrors (one line) naming the path and the fix."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from reattn_batch.paths import holds_zarr, overlap
from reattn_batch.scene.uri import is_remote, resolve_uri
from reattn_batch.workers.errors import InputError


def local_scenes(scenes: Iterable[str]) -> list[Path]:
    """The local files and Zarr folders among a job's scenes (resolved)."""
    out = []
    for uri in scenes:
        _, path = resolve_uri(uri)
        if not is_remote(path):
            out.append(Path(path).resolve())
    return out


def zarr_at_or_above(path: Path) -> Path | None:
    """``path`` or the nearest folder above it that holds Zarr metadata, or None."""
    for folder in (path, *path.parents):
        if holds_zarr(folder):
            return folder
    return None


def check_output_root(root: Path, scenes: Iterable[str]) -> None:
    """Refuse an output root that is a file, is or lies inside a Zarr store (a label store
    or anyone's datacube: the job would write its stores, index and summary into it), or
    is or lies inside a local input scene."""
    root = Path(root).resolve()
    if root.exists() and not root.is_dir():
        raise InputError(f"{root} is a file; pass a folder for the job's stores")
    for scene in local_scenes(scenes):
        if overlap(root, scene) in ("is", "lies inside"):
            raise InputError(
                f"{root} is or lies inside the input scene {scene}; "
                "pass a folder outside the scenes"
            )
    store = zarr_at_or_above(root)
    if store is not None:
        where = "is" if store == root else f"lies inside {store}, which is"
        raise InputError(
            f"{root} {where} a Zarr store; the job writes a store per scene, its index and "
            "summary into this folder: pass a folder that is not in a Zarr store"
        )


def check_summary(path: Path, spec: Path, scenes: Iterable[str]) -> None:
    """Refuse a summary path that is a folder, the job spec, a local input scene (or lies
    inside one), or lies inside a Zarr store: writing the summary would replace it."""
    target = Path(path).resolve()
    if target.is_dir():
        raise InputError(f"summary={path} is a folder; pass a file path for the JSON summary")
    if overlap(target, spec) == "is":
        raise InputError(f"summary={path} is the job spec; pass another file for the summary")
    for scene in local_scenes(scenes):
        if overlap(target, scene) in ("is", "lies inside"):
            raise InputError(f"summary={path} is the input scene {scene}; pass another path")
    store = zarr_at_or_above(target.parent)
    if store is not None:
        raise InputError(
            f"summary={path} lies inside the Zarr store {store}; pass a path outside it"
        )
