"""Creating a label store: every array and attribute, no label data (SPEC 3.3).

The store is built in a temporary sibling folder and renamed into place, so a store path
never holds a half-created store. An existing path is replaced only with ``overwrite``, and
only when it is a store reattn-batch made (its marker: the group attribute
``software: reattn-batch`` with a ``store_layout_version``, and its record arrays) or an
empty folder: never another Zarr, never a
folder of other files, never the input scene (see :func:`check_not_input`).

The final step never deletes what it did not check (:func:`_place`). Without
``overwrite`` it only renames, with :func:`rename_noreplace`: a path that appeared while the
store was being built (another process) is left as it is and the call fails. With
``overwrite`` the path is checked again just before, the old store moved aside (renamed to a
temporary sibling, and checked again there), the new one renamed in, and only then the old
one deleted; if the new one cannot be renamed in, the old one is put back. (Two runs into
one store are kept apart before this by the store's lock, store/lock.py.)
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import errno
import functools
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import zarr

from reattn_batch.paths import holds_zarr, overlap
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

log = logging.getLogger(__name__)

#: The marker every store of reattn-batch carries: the group attribute ``software`` with
#: this value (and ``store_layout_version``), written by :func:`_build` itself. (No extra
#: file: zarr warns about files it does not know in a group.)
SOFTWARE = "reattn-batch"


class Found(enum.Enum):
    """What a run finds at its store path (:func:`found_at`); the value words it."""

    NOTHING = "nothing"
    LINK = "a symbolic link"
    FILE = "a file"
    EMPTY = "an empty folder"
    OUR_STORE = "a label store of reattn-batch"
    ZARR = "a Zarr store that is not a readable label store of reattn-batch"
    FOLDER = "a folder of other files"

    @property
    def replaceable(self) -> bool:
        """Whether ``overwrite`` may replace it (and ``resume`` finish or start in it): an
        empty folder or a label store of reattn-batch, never anything else."""
        return self in (Found.EMPTY, Found.OUR_STORE)


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


def found_at(path: str | os.PathLike) -> Found:
    """What is at ``path`` (a symbolic link is a link, whatever it points to)."""
    path = Path(path)
    if path.is_symlink():
        return Found.LINK
    if not path.exists():
        return Found.NOTHING
    if not path.is_dir():
        return Found.FILE
    if is_our_store(path):
        return Found.OUR_STORE
    if not any(path.iterdir()):
        return Found.EMPTY
    if holds_zarr(path):
        return Found.ZARR
    return Found.FOLDER


def refuse_link(path: str | os.PathLike) -> None:
    """Refuse (one line naming the link and its target) a store path that is a symbolic
    link: a run neither writes, replaces nor resumes a store through a link (its checks of
    what it replaces would be of the link; the store is named by its own path)."""
    path = Path(path)
    if path.is_symlink():
        try:
            target = str(path.resolve())
        except (OSError, RuntimeError):  # a loop of links
            target = os.readlink(path)
        raise StoreError(
            f"the output store {path} is a symbolic link to {target}; a run does not write "
            f"a store through a link: pass out={target} (the store itself) or another path"
        )


def check_usable(path: str | os.PathLike, found: Found | None = None) -> Found:
    """What is at ``path`` (``found``, else looked at), refused with one line unless a run
    may use it: nothing, an empty folder or a label store of reattn-batch (which
    ``overwrite`` replaces and ``resume`` finishes). No flag would make anything else
    usable, so the line asks for another path."""
    found = found_at(path) if found is None else found
    if found is Found.LINK:
        refuse_link(path)
    if found is Found.NOTHING or found.replaceable:
        return found
    raise StoreError(
        f"{path} exists and is {found.value}: overwrite=True replaces only a label store "
        "reattn-batch made and resume=True finishes only one; move it away or pass "
        "another out=path"
    )


def check_not_input(out: str | os.PathLike, inputs: Iterable[str | os.PathLike]) -> None:
    """Refuse an output path that is, contains or lies inside a local input (the scene):
    writing or ``--overwrite`` there would destroy it. ``inputs``: local paths."""
    for source in inputs:
        if overlap(out, source) is not None:
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
    _before_rename: Callable[[Path], None] | None = None,
) -> None:
    """Create the label store at ``path`` with all metadata and no label data.

    attrs: group attributes from the caller (classes and synonyms, method and its
        hyperparameters, weight identities, software version, run fingerprint...); they
        must be JSON-serialisable (numpy scalars/arrays and tuples are converted). Keys the
        store sets itself (georeferencing, ``class_names``) take precedence.
    overwrite: replace an existing store at ``path``; without it an existing path is a
        UserError. Only a store reattn-batch made or an empty folder is ever removed, and
        only once the new store is in its place.
    class_names: the final class list; label c means class_names[c] (at most 255 classes).
    background_index: the class drawn grey in the colour map (None: no background class).
    blocks: the block grid (rows, cols); ``block_done`` records each block's completion.
    _before_rename: a test seam, called with the built temporary store just before it is
        renamed to ``path`` (after an old store was moved aside), to act as a concurrent
        process would.
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

    found = found_at(path)
    if found is not Found.NOTHING:
        if not overwrite and found is not Found.LINK:
            raise StoreError(
                f"{path} already exists; pass overwrite=True to replace it "
                "or resume=True to finish it"
            )
        check_usable(path, found)

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
        _place(tmp, path, overwrite, _before_rename)
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


_AT_FDCWD = -100
_RENAME_NOREPLACE = 1


@functools.cache
def _renameat2() -> Callable[..., int] | None:
    """libc's ``renameat2`` (Linux, glibc >= 2.28), or None."""
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    function.restype = ctypes.c_int
    return function


def rename_noreplace(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Rename the folder ``src`` to ``dst``, atomically, only if nothing is at ``dst``:
    ``FileExistsError`` (or ``OSError`` ENOTEMPTY) otherwise, never a replacement.

    ``os.rename`` onto an existing empty folder replaces it, and checking first races
    with other processes. So: Linux's ``renameat2(RENAME_NOREPLACE)``; where the kernel,
    libc or file system lacks it, ``dst`` is claimed with ``mkdir`` (atomic: it fails if
    anything is there) and ``src`` renamed onto that empty claim. A rename replaces an
    empty folder only, never a file, a link or a folder with something in it, so even if
    another process swaps the claim, nothing of its is lost: the rename fails instead.
    """
    function = _renameat2()
    if function is not None:
        if (
            function(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE)
            == 0
        ):
            return
        code = ctypes.get_errno()
        if code not in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
            raise OSError(code, os.strerror(code), os.fspath(dst))
    rename_claiming(src, dst)


def rename_claiming(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """:func:`rename_noreplace` without ``renameat2``: claim ``dst`` with ``mkdir``, then
    rename the folder ``src`` onto that empty claim."""
    os.mkdir(dst)  # the claim: FileExistsError if anything is there
    try:
        os.rename(src, dst)
    except BaseException:
        with contextlib.suppress(OSError):
            os.rmdir(dst)  # our claim, if it is still an empty folder
        raise


def _appeared(exc: OSError) -> bool:
    return exc.errno in (errno.EEXIST, errno.ENOTEMPTY)


def _place(
    tmp: Path, path: Path, overwrite: bool, before_rename: Callable[[Path], None] | None
) -> None:
    """Rename the built store ``tmp`` to ``path``, deleting nothing unchecked.

    Without ``overwrite``: a rename that replaces nothing (a path that appeared meanwhile
    fails the call, left as it is). With it, an existing ``path`` that is (still) our
    store or an empty folder is moved aside first, the new store renamed in, and then the
    old one deleted; if the new one cannot be renamed in, the old one is put back."""
    aside = _move_aside(path) if overwrite and found_at(path) is not Found.NOTHING else None
    try:
        if before_rename is not None:
            before_rename(tmp)
        rename_noreplace(tmp, path)
    except BaseException as exc:  # Ctrl-C included: the old store goes back first
        if aside is not None:
            _put_back(aside, path, exc if isinstance(exc, OSError) else None)
        if isinstance(exc, OSError) and _appeared(exc):
            raise StoreError(
                f"{path} appeared while this store was being created (by another run?) and is "
                "left as it is; pass another out=path, or try again once that run has ended"
            ) from None
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
        if aside.exists():
            log.warning("could not delete all of the replaced store, left at %s", aside)


def _move_aside(path: Path) -> Path | None:
    """Rename the store at ``path`` to a temporary sibling, once it is checked (again)
    to be our store or an empty folder; None if it is gone meanwhile."""
    check_usable(path)
    aside = path.absolute().parent / f".{path.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        rename_noreplace(path, aside)
    except FileNotFoundError:
        return None
    if not found_at(aside).replaceable:  # something else took its place between check and move
        _put_back(aside, path, None)
        check_usable(path)  # says what it is
        raise StoreError(f"{path} changed while it was being replaced; choose another output path")
    return aside


def _put_back(aside: Path, path: Path, cause: OSError | None) -> None:
    """Rename the moved-aside store back to ``path``; a one-line error if it cannot be."""
    try:
        rename_noreplace(aside, path)
    except OSError as exc:
        why = f" ({cause.strerror or cause})" if cause is not None else ""
        raise StoreError(
            f"the new store could not be renamed to {path}{why}, and the old one cannot be "
            f"put back ({exc.strerror or exc}): it is kept at {aside}; move it back by hand"
        ) from None


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
