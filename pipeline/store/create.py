"""Creating a label store: every array and attribute, no label data (SPEC 3.3).

The store is built in a temporary sibling folder and renamed into place, so a store path
never holds a half-created store. An existing path is replaced only with ``overwrite``, and
only when it is a store reattn-batch made (its marker: the group attribute
``software: reattn-batch`` with a ``store_layout_version``, and its record arrays) or an
empty folder: never another Zarr, never a
folder of other files, never the input scene (see :func:`check_not_input`).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import zarr

from reattn_batch.store.arrays import forget_arrays
from reattn_batch.store.attrs import checked_attrs
from reattn_batch.store.georef import (
    axis_attrs,
    convention_attrs,
    grid_mapping_attrs,
    pixel_centres,
)
from reattn_batch.store.layout import (
    BLOCK_DONE,
    BLOCK_STARTED,
    CHUNK_KEYS,
    COMPRESSOR,
    CONFIDENCE,
    GRID_MAPPING,
    LABELS,
    NODATA,
    STORE_LAYOUT_VERSION,
    StoreLayout,
    validate_layout,
)
from reattn_batch.store.palette import label_attrs
from reattn_batch.store.records import RECORD_CHUNK
from reattn_batch.workers.classes import MAX_CLASSES
from reattn_batch.workers.errors import StoreError

#: The marker every store of reattn-batch carries: the group attribute ``software`` with
#: this value (and ``store_layout_version``), written by :func:`_build` itself. (No extra
#: file: zarr warns about files it does not know in a group.)
SOFTWARE = "reattn-batch"
ZARR_MARKERS = (".zgroup", ".zarray", "zarr.json")


def is_our_store(path: Path) -> bool:
    """True for a label store reattn-batch made: its marker attributes and record array."""
    if not (path.is_dir() and not path.is_symlink() and (path / BLOCK_DONE / ".zarray").is_file()):
        return False
    try:
        attrs = json.loads((path / ".zattrs").read_text())
    except (OSError, ValueError):
        return False
    return (
        isinstance(attrs, dict)
        and attrs.get("software") == SOFTWARE
        and "store_layout_version" in attrs
    )


def looks_like_zarr(path: Path) -> bool:
    """True for a path ``--overwrite`` may replace: an empty folder or our own store."""
    if path.is_dir() and not path.is_symlink():
        return not any(path.iterdir()) or is_our_store(path)
    return False


def check_not_input(out: str | os.PathLike, inputs: Iterable[str | os.PathLike]) -> None:
    """Refuse an output path that is, contains or lies inside a local input (the scene):
    writing or ``--overwrite`` there would destroy it. ``inputs``: local paths."""
    target = Path(out).expanduser().resolve()
    for source in inputs:
        src = Path(source).expanduser().resolve()
        if target == src or src.is_relative_to(target) or target.is_relative_to(src):
            raise StoreError(
                f"the output store {out} is, holds or lies inside the input {source}; "
                "pass an out=path outside the input"
            )


def create_store(
    path: str | os.PathLike,
    layout: StoreLayout,
    *,
    attrs: dict[str, Any],
    class_names: list[str],
    overwrite: bool = False,
    background_index: int | None = 0,
    blocks: tuple[int, int] = (1, 1),
) -> None:
    """Create the label store at ``path`` with all metadata and no label data.

    attrs: group attributes from the caller (classes and synonyms, method and its
        hyperparameters, weight identities, software version, run fingerprint...); they
        must be JSON-serialisable (numpy scalars/arrays and tuples are converted). Keys the
        store sets itself (georeferencing, ``class_names``) take precedence.
    overwrite: replace an existing store at ``path``; without it an existing path is a
        UserError. Only a Zarr store or an empty folder is ever removed.
    class_names: the final class list; label c means class_names[c] (at most 255 classes).
    background_index: the class drawn grey in the colour map (None: no background class).
    blocks: the block grid (rows, cols); ``block_done`` records each block's completion.
    """
    path = Path(path)
    validate_layout(layout)
    if not class_names:
        raise ValueError("class_names is empty")
    if len(class_names) > MAX_CLASSES:
        raise StoreError(
            f"{len(class_names)} classes do not fit in a uint8 label map with 255 as nodata; "
            f"pass at most {MAX_CLASSES} classes"
        )
    user_attrs = checked_attrs(attrs)

    if path.exists() or path.is_symlink():
        if not overwrite:
            raise StoreError(
                f"{path} already exists; pass overwrite=True to replace it "
                "or resume=True to finish it"
            )
        if not looks_like_zarr(path):
            what = (
                "a Zarr store reattn-batch did not make"
                if path.is_dir() and any((path / n).exists() for n in ZARR_MARKERS)
                else "not a Zarr store"
            )
            raise StoreError(
                f"{path} exists and is {what}, so overwrite=True will not delete it; "
                "choose another output path"
            )

    parent = path.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(
            f"cannot create the folder for the output store {path} ({exc.strerror or exc}); "
            "pass an output path in a writable folder"
        ) from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise StoreError(
            f"the folder {parent} of the output store {path} is not writable; "
            "pass an output path in a writable folder"
        )

    tmp = parent / f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        _build(tmp, layout, user_attrs, class_names, background_index, blocks)
        if path.exists() or path.is_symlink():
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        os.rename(tmp, path)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise StoreError(
            f"cannot write the output store {path} ({exc.strerror or exc}); "
            "check the folder is writable and has free space"
        ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    forget_arrays(path)


def _build(
    root: Path,
    layout: StoreLayout,
    user_attrs: dict[str, Any],
    class_names: list[str],
    background_index: int | None,
    blocks: tuple[int, int],
) -> None:
    """Write the whole store (no label data) into the new folder ``root``."""
    crs_wkt = layout.crs_wkt
    geo = convention_attrs(layout)
    group_attrs: dict[str, Any] = dict(user_attrs)
    group_attrs.update(
        {
            "software": SOFTWARE,
            "Conventions": "CF-1.8",
            "store_layout_version": STORE_LAYOUT_VERSION,
            "class_names": list(class_names),
            "nodata": NODATA,
            "chunk": layout.chunk,
            **geo,
        }
    )
    if crs_wkt is None:
        group_attrs["crs_warning"] = (
            "the scene has no CRS: x/y are pixel coordinates (column/row of pixel centres) "
            "and the store is not georeferenced"
        )

    def raster_attrs(extra: dict[str, Any]) -> dict[str, Any]:
        a: dict[str, Any] = {"_ARRAY_DIMENSIONS": ["y", "x"], **extra, **geo}
        if crs_wkt is not None:
            a["grid_mapping"] = GRID_MAPPING
            a["coordinates"] = GRID_MAPPING  # xarray: spatial_ref becomes a coordinate
            a["_CRS"] = {"wkt": crs_wkt}  # GDAL's own CRS attribute
        return a

    group = zarr.open_group(str(root), mode="w-", zarr_format=2, attributes=group_attrs)

    x, y = pixel_centres(layout)
    x_attrs, y_attrs = axis_attrs(crs_wkt)
    for name, values, extra in (("x", x, x_attrs), ("y", y, y_attrs)):
        arr = group.create_array(
            name,
            shape=values.shape,
            chunks=values.shape,
            dtype="float64",
            fill_value=None,
            compressors=COMPRESSOR,
            chunk_key_encoding=CHUNK_KEYS,
            attributes={"_ARRAY_DIMENSIONS": [name], **extra},
        )
        arr[...] = values

    if crs_wkt is not None:
        sr = group.create_array(
            GRID_MAPPING,
            shape=(),
            dtype="int64",
            fill_value=None,
            compressors=None,
            attributes={"_ARRAY_DIMENSIONS": [], **grid_mapping_attrs(layout)},
        )
        sr[...] = 0

    def raster(name: str, extra: dict[str, Any]) -> None:
        group.create_array(
            name,
            shape=(layout.height, layout.width),
            chunks=(layout.chunk, layout.chunk),
            dtype="uint8",
            fill_value=NODATA,
            compressors=COMPRESSOR,
            chunk_key_encoding=CHUNK_KEYS,
            attributes=raster_attrs({**extra, "nodata": NODATA}),
        )

    raster(LABELS, label_attrs(class_names, background_index))
    if layout.with_confidence:
        raster(
            CONFIDENCE,
            {"long_name": "confidence: max class probability x 254", "valid_range": [0, 254]},
        )
    for name, meaning in (
        (BLOCK_STARTED, "1 once a run submitted the block's task"),
        (BLOCK_DONE, "1 once the block's data is durable (completion record for --resume)"),
    ):
        group.create_array(
            name,
            shape=blocks,
            # a few files for any scene, written by the driver only (store/records.py)
            chunks=(min(blocks[0], RECORD_CHUNK), min(blocks[1], RECORD_CHUNK)),
            dtype="uint8",
            fill_value=0,
            compressors=None,
            chunk_key_encoding=CHUNK_KEYS,
            attributes={"_ARRAY_DIMENSIONS": ["block_row", "block_col"], "long_name": meaning},
        )
    zarr.consolidate_metadata(str(root))
