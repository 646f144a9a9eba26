"""Creating a label store: every array and attribute, no label data (SPEC 3.3).

The store is built in a temporary sibling folder and renamed into place, so a store path
never holds a half-created store; an existing path is replaced only with ``overwrite``,
and only when it is a Zarr store or an empty folder.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import zarr

from pipeline.store.arrays import forget_arrays
from pipeline.store.attrs import checked_attrs
from pipeline.store.georef import axis_attrs, convention_attrs, grid_mapping_attrs, pixel_centres
from pipeline.store.layout import (
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
from pipeline.store.palette import label_attrs
from workers.classes import MAX_CLASSES
from workers.errors import UserError


def looks_like_zarr(path: Path) -> bool:
    if path.is_dir():
        if not any(path.iterdir()):
            return True  # an empty folder is safe to replace
        return any((path / name).exists() for name in (".zgroup", ".zarray", "zarr.json"))
    return False


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
        raise UserError(
            f"{len(class_names)} classes do not fit in a uint8 label map with 255 as nodata; "
            f"pass at most {MAX_CLASSES} classes"
        )
    user_attrs = checked_attrs(attrs)

    if path.exists() or path.is_symlink():
        if not overwrite:
            raise UserError(
                f"{path} already exists; pass --overwrite to replace it or --resume to finish it"
            )
        if not looks_like_zarr(path):
            raise UserError(
                f"{path} exists and is not a Zarr store, so --overwrite will not delete it; "
                "choose another output path"
            )

    parent = path.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(
            f"cannot create the folder for the output store {path} ({exc.strerror or exc}); "
            "pass an output path in a writable folder"
        ) from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(
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
        raise UserError(
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
        (BLOCK_STARTED, "1 once a task has started the block"),
        (BLOCK_DONE, "1 once the block's data is written (completion record for --resume)"),
    ):
        group.create_array(
            name,
            shape=blocks,
            chunks=(1, 1),  # one file per block: each task writes only its own record
            dtype="uint8",
            fill_value=0,
            compressors=None,
            chunk_key_encoding=CHUNK_KEYS,
            attributes={"_ARRAY_DIMENSIONS": ["block_row", "block_col"], "long_name": meaning},
        )
    zarr.consolidate_metadata(str(root))
