"""What the viewer shows: one label store, its scene, and the page's JSON (``StoreView``).

The answers behind the routes: label and imagery tile PNGs, the pixel query and the
``/api/info`` document (the numbers of ``reattn-batch info``).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np

from reattn_batch.outputs.info import number_text
from reattn_batch.outputs.stac import SOURCE_ITEM_ATTR
from reattn_batch.scene.stac_item import remote_item
from reattn_batch.store import NODATA, LabelStore
from reattn_batch.viewer.colours import colour_table
from reattn_batch.viewer.label_tiles import LabelTiler
from reattn_batch.viewer.png import empty_png, encode_png
from reattn_batch.viewer.scene_tiles import SceneTiler
from reattn_batch.viewer.static_files import load_static
from reattn_batch.viewer.tile_grid import MAX_ZOOM
from reattn_batch.workers.errors import InputError, UserError

log = logging.getLogger("reattn_batch")


class StoreView:
    """What the server shows: one store, its scene, and the page's JSON (thread-safe)."""

    def __init__(self, store: LabelStore | str | Path, scene: str | None = None) -> None:
        """store: a label store written by `reattn-batch run` (open, or its path).
        scene: the imagery to show under the labels (default: the store's recorded input).
        """
        from reattn_batch.outputs.info import store_info
        from reattn_batch.store import CONFIDENCE, label_store
        from reattn_batch.store.arrays import open_array

        self.ls = label_store(store)
        if self.ls.crs_wkt is None:
            raise InputError(
                f"{self.ls.path} has no CRS, so it cannot be placed on a map; "
                "use `reattn-batch export --quicklook` to look at it"
            )
        attrs = self.ls.attrs
        log.info("reading %s (class areas)", self.ls.path)
        self.info = store_info(self.ls)  # the same numbers as `reattn-batch info`
        self.labels = LabelTiler(self.ls)
        self.colormap = self.ls.colormap
        self.n_classes = len(self.ls.class_names)
        try:
            self.confidence = open_array(self.ls.path, CONFIDENCE, mode="r")
        except KeyError:  # the run did not save one (--save-confidence)
            self.confidence = None
        self.scene_uri = scene or attrs.get("scene")
        self.scene_note: str | None = None
        self.imagery: SceneTiler | None = None
        if self.scene_uri:
            # the recorded scene of a store mapped from a remote STAC Item is that Item's
            # asset: opened as a GeoTIFF/COG only (scene/stac_item.py), as the run did
            remote_asset = scene is None and remote_item(str(attrs.get(SOURCE_ITEM_ATTR) or ""))
            try:
                self.imagery = self._open_scene(str(self.scene_uri), attrs, remote_asset)
            except UserError as exc:
                if scene is not None:  # asked for explicitly: its problem is the user's
                    raise
                self.scene_note = f"imagery unavailable: {exc}"
                log.warning("%s; showing the labels only (pass --scene PATH)", self.scene_note)
        else:
            self.scene_note = "the store records no input scene; pass --scene PATH"
        self.static = load_static()
        self.page_info = self._page_info()
        # The low zooms' overview, built while the browser opens (one pass over the store;
        # tiles that need it wait for it).
        threading.Thread(target=self._warm_overview, name="overview", daemon=True).start()

    def _warm_overview(self) -> None:
        try:
            self.labels.overview()
        except Exception:  # e.g. the process is exiting; a tile that needs it will retry
            log.debug("building the overview in the background failed", exc_info=True)

    @staticmethod
    def _open_scene(uri: str, attrs: dict[str, Any], remote_asset: bool) -> SceneTiler:
        from reattn_batch.scene import open_scene

        bands = attrs.get("bands")
        stretch = attrs.get("stretch")
        info = open_scene(
            uri,
            bands=tuple(bands) if bands else None,
            stretch=tuple(stretch) if stretch else None,
            variable=attrs.get("variable"),
            remote_asset=remote_asset,
        )
        if info.crs_wkt is None:
            raise InputError(f"{uri} has no CRS, so it cannot be placed on the map")
        return SceneTiler(info)

    def _page_info(self) -> dict[str, Any]:
        info = self.info
        west, south, east, north = self.labels.bounds_lonlat()
        native = self.labels.native_zoom()
        classes = []
        for c in info["classes"]:
            classes.append(
                {
                    **c,
                    "hectares_text": number_text(c["hectares"], 2),
                    "percent_text": number_text(c["percent"], 1),
                }
            )
        weights = info["weights"] or {}
        clip = weights.get("clip") or {}
        return {
            "name": self.ls.path.name,
            "store": info["store"],
            "scene": str(self.scene_uri) if self.scene_uri else None,
            "imagery": self.imagery is not None,
            "scene_note": self.scene_note,
            "bounds": [west, south, east, north],
            "native_zoom": native,
            "min_zoom": self.labels.min_zoom(),
            "max_zoom": min(MAX_ZOOM, native + 3),
            "complete": info["complete"],
            "progress": info["progress"],
            "method": info["method"],
            "upsampler": info["upsampler"],
            "clip_weights": " ".join(
                str(clip[k]) for k in ("source", "name") if clip.get(k) is not None
            ),
            "random_weights": info["random_weights"],
            "warning": info["warning"],
            "crs": (info["crs"] or {}).get("epsg") or (info["crs"] or {}).get("name"),
            "shape": info["shape"],
            "pixel_size": info["pixel_size"],
            "area_available": info["area_available"],
            "area_note": info["area_note"],
            "valid_hectares": info["valid_hectares"],
            "valid_hectares_text": number_text(info["valid_hectares"], 2),
            "classes": classes,
            "has_confidence": self.confidence is not None,
        }

    # ------------------------------------------------------------------ answers

    def label_png(self, z: int, x: int, y: int, visible: set[int] | None) -> bytes:
        labels = self.labels.label_tile(z, x, y)
        if not (labels != NODATA).any():
            return empty_png()
        return encode_png(colour_table(self.colormap, visible)[labels])

    def scene_png(self, z: int, x: int, y: int) -> bytes | None:
        if self.imagery is None:
            return None
        return self.imagery.tile(z, x, y)

    def pixel(self, lon: float, lat: float) -> dict[str, Any]:
        """Class and confidence of the store pixel at (lon, lat)."""
        where = self.labels.pixel(lon, lat)
        if where is None:
            return {"inside": False}
        row, col = where
        label = int(np.asarray(self.ls.labels[row, col]))
        out: dict[str, Any] = {"inside": True, "row": row, "col": col, "label": label}
        out["class"] = self.ls.class_names[label] if label < self.n_classes else None
        out["nodata"] = label == NODATA
        if self.confidence is not None:
            raw = int(np.asarray(self.confidence[row, col]))
            out["confidence"] = None if raw == NODATA else raw / 254
        return out
