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


#: The end of every default store name.
STORE_SUFFIX = ".labels.zarr"


def default_out(scene: str) -> Path:
    """<scene stem>.labels.zarr in the working directory; a STAC Item's: <item id>.labels.zarr,
    the id made one safe path component (``scene/stac_item.py``: ``store_stem``). Reads a
    STAC Item (its id), not its asset."""
    from reattn_batch.scene.stac_item import is_stac_item, item_location, read_item

    if is_stac_item(scene):
        return Path.cwd() / item_store_name(read_item(item_location(scene)).id)
    return Path.cwd() / scene_store_name(scene)


def item_store_name(item_id: str) -> str:
    """A STAC Item's store name: its id as one safe path component, + STORE_SUFFIX."""
    from reattn_batch.scene.stac_item import store_stem

    return store_stem(item_id) + STORE_SUFFIX


def scene_store_name(scene: str) -> str:
    """<scene stem>.labels.zarr: the last part of the path or URL without its suffix."""
    name = scene.rstrip("/").rsplit("/", 1)[-1]
    stem = name.split("?", 1)[0]
    for suffix in (".zarr", ".tiff", ".tif", ".vrt", ".jp2"):
        stem = stem.removesuffix(suffix)
    return f"{stem or 'scene'}{STORE_SUFFIX}"
