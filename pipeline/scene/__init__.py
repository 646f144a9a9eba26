"""Scenes (SPEC 3.2): the one place that knows input formats.

``open_scene`` reads metadata (and the stretch) into a picklable :class:`SceneInfo`;
``read_window`` turns any native-pixel window into ``(rgb uint8 (h, w, 3), valid (h, w))``.

    uri.py            a user's location -> what a reader opens; GDAL settings for remote files
    info.py           SceneInfo, WindowReadError
    policy.py         bands, valid mask and stretch (the rules every backend applies)
    gdal_backend.py   GeoTIFF/COG through rasterio
    zarr_backend.py   Zarr through xarray/rioxarray
    handles.py        open datasets cached per thread
    open.py, read.py  open_scene, read_window
"""

from reattn_batch.scene.handles import close_cached_datasets
from reattn_batch.scene.info import SceneInfo, WindowReadError
from reattn_batch.scene.open import open_scene
from reattn_batch.scene.policy import stretch_to_uint8
from reattn_batch.scene.read import read_window
from reattn_batch.scene.uri import resolve_uri

__all__ = [
    "SceneInfo",
    "WindowReadError",
    "close_cached_datasets",
    "open_scene",
    "read_window",
    "resolve_uri",
    "stretch_to_uint8",
]
