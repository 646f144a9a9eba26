"""``segment``: one in-memory image (numpy, or a georeferenced xarray DataArray) into labels,
exactly as ``reattn-batch segment`` does a file (SegEarth-OV's protocol, SPEC 2.7)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from reattn_batch.api.model import class_list, load_model, use_classes
from reattn_batch.image.segment import segment_array
from reattn_batch.workers.classes import ClassList
from reattn_batch.workers.errors import InputError
from reattn_batch.workers.segmenter import Segmenter

if TYPE_CHECKING:
    import xarray as xr

#: ``resize``'s default: the long side (px) SegEarth-OV's protocol and the CLI resize to.
DEFAULT_LONG_SIDE = 448


def _rgb_of_array(image: np.ndarray) -> np.ndarray:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InputError(
            f"`image`: a numpy image must be (H, W, 3) uint8 RGB, got {image.dtype} "
            f"{image.shape}; for (band, y, x) data pass an xarray DataArray"
        )
    return np.ascontiguousarray(image)


def _rgb_of_dataarray(image: xr.DataArray) -> np.ndarray:
    if image.dims != ("band", "y", "x") or image.sizes["band"] != 3:
        raise InputError(
            f"`image`: a DataArray must have dims (band, y, x) with 3 bands (R, G, B), got "
            f"{dict(image.sizes)}; select them first, e.g. image.sel(band=[3, 2, 1])"
        )
    if image.dtype != np.uint8:
        raise InputError(
            f"`image`: the DataArray is {image.dtype}; scale it to uint8 0..255 first, or map "
            "it with reattn_batch.map_scene, which applies one scene-wide stretch"
        )
    return np.ascontiguousarray(np.moveaxis(np.asarray(image.values), 0, -1))


def _georeferenced(
    image: xr.DataArray, values: np.ndarray, name: str, attrs: dict[str, Any], leading=()
) -> xr.DataArray:
    """``values`` (*leading, y, x) on the input's y/x coordinates, CRS and transform."""
    import rioxarray  # noqa: F401  (registers .rio)
    import xarray as xr

    crs = image.rio.crs
    transform = image.rio.transform()
    coords = {k: v for k, v in image.coords.items() if "band" not in v.dims}
    dims = (*(d for d, _ in leading), "y", "x")
    coords |= {d: c for d, c in leading}
    out = xr.DataArray(values, dims=dims, coords=coords, name=name, attrs=attrs)
    if crs is not None:
        out = out.rio.write_crs(crs)
    return out.rio.write_transform(transform)


def segment(
    image: np.ndarray | xr.DataArray,
    classes: str | Sequence[str] | ClassList,
    model: Segmenter | None = None,
    *,
    logits: bool = False,
    resize: int | None = DEFAULT_LONG_SIDE,
    background: bool = True,
    **model_keywords: Any,
) -> Any:
    """Labels of one image, of the same kind as ``image``.

    image: an (H, W, 3) uint8 RGB numpy array, or an xarray DataArray (band, y, x) of 3
    uint8 bands (e.g. from ``rioxarray.open_rasterio``). classes: "road/parking lot,building"
    text or a list of names; "background" is class 0 unless ``background`` is False.
    model: a :func:`~reattn_batch.load_model` module (reused across calls); else one is
    loaded from ``model_keywords`` (the keywords of ``load_model``). resize: the long side
    in px the image is resized to before inference (None: as it is), as the CLI's
    ``--resize``.

    Returns (H, W) uint8 labels (an index into ``["background", *classes]``): a numpy
    array, or a DataArray (y, x) with the input's coordinates, CRS and transform and the
    class names in ``attrs["class_names"]``. With ``logits=True``, ``(labels, logits)``:
    (Q, H, W) float32 mean raw crop logits, one per text query (synonyms apart).
    """
    import xarray as xr

    if isinstance(image, xr.DataArray):
        rgb = _rgb_of_dataarray(image)
    elif isinstance(image, np.ndarray):
        rgb = _rgb_of_array(image)
    else:
        raise InputError(
            f"`image`: expected a numpy array or an xarray DataArray, got {type(image).__name__}"
        )
    if resize is not None and (isinstance(resize, bool) or int(resize) != resize or resize < 1):
        raise InputError(f"resize={resize!r}: pass a long side in pixels (e.g. 448) or None")
    class_names = class_list(classes, background)
    if model is None:
        model = load_model(**model_keywords)
    elif model_keywords:
        raise InputError(
            f"`model` was given, so {', '.join(sorted(model_keywords))} cannot apply: pass "
            "them to load_model() instead"
        )
    use_classes(model, class_names)
    with torch.no_grad():
        result = segment_array(model, class_names, rgb, resize)
    if not isinstance(image, xr.DataArray):
        return (result.labels, result.logits) if logits else result.labels
    attrs = {
        "class_names": class_names.names,
        "flag_values": list(range(len(class_names.names))),
        "flag_meanings": " ".join(n.replace(" ", "_") for n in class_names.names),
    }
    labels = _georeferenced(image, result.labels, "labels", attrs)
    if not logits:
        return labels
    queries = ("query", class_names.queries)
    raw = _georeferenced(image, result.logits, "logits", {"class_names": class_names.names},
                         leading=(queries,))  # fmt: skip
    return labels, raw
