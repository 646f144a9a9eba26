"""What `reattn-batch run` is asked to do for one scene (:class:`SceneRequest`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from reattn_batch.settings import ClusterSettings, SceneSettings
from reattn_batch.workers.classes import ClassList
from reattn_batch.workers.model_spec import ModelSpec


@dataclasses.dataclass(frozen=True)
class SceneRequest:
    """One scene to map: where it is, with which model and classes, into which store."""

    scene: str  # the user's location: a path, URL or Zarr store
    model: ModelSpec
    classes: ClassList
    out: Path
    settings: SceneSettings = SceneSettings()
    cluster: ClusterSettings = ClusterSettings()
    overwrite: bool = False
    resume: bool = False


def default_out(scene: str, asset: str | None = None) -> Path:
    """<scene stem>.labels.zarr in the working directory; a STAC Item's: <item id>.labels.zarr."""
    from reattn_batch.scene.uri import resolve_scene

    _, item = resolve_scene(scene, asset)
    if item is not None:
        return Path.cwd() / f"{item.item_id}.labels.zarr"
    name = scene.rstrip("/").rsplit("/", 1)[-1]
    stem = name.split("?", 1)[0]
    for suffix in (".zarr", ".tiff", ".tif", ".vrt", ".jp2"):
        stem = stem.removesuffix(suffix)
    return Path.cwd() / f"{stem or 'scene'}.labels.zarr"
