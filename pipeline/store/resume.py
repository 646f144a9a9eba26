"""Create a store for a run, or reopen it for ``--resume`` (SPEC 3.5)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import zarr

from reattn_batch.paths import holds_zarr
from reattn_batch.store.attrs import checked_attrs, read_attrs
from reattn_batch.store.create import Found, create_store, found_at, refuse_link
from reattn_batch.store.layout import BLOCK_DONE, BLOCK_STARTED, CONFIDENCE, LABELS, StoreLayout
from reattn_batch.store.records import done_blocks
from reattn_batch.workers.errors import StoreError


def prepare(
    path: str | os.PathLike,
    layout: StoreLayout,
    *,
    attrs: dict[str, Any],
    class_names: list[str],
    blocks: tuple[int, int],
    overwrite: bool,
    resume: bool,
    background_index: int | None = 0,
    run_keys: Sequence[str] = (),
    worker_keys: Sequence[str] = (),
) -> set[int]:
    """Create the store, or open it for ``resume``; returns the blocks already done.

    A resumed store must have been written by the same run (same ``run_fingerprint``);
    and the same ``worker_keys`` attributes (decided by the workers, e.g. the precision);
    otherwise a UserError names the ``run_keys`` attributes that differ. Its arrays must
    be the ones this run would create (:func:`check_layout`), so that its completion
    records mean the blocks this run computes. Checked before anything is computed. A
    symbolic link at ``path`` is refused (:func:`~reattn_batch.store.create.refuse_link`),
    as ``create_store`` and ``overwrite`` refuse it.
    """
    path = Path(path)
    refuse_link(path)
    if resume and holds_zarr(path):
        old, new = read_attrs(path), checked_attrs(attrs)
        if old.get("run_fingerprint") != new.get("run_fingerprint") or any(
            old.get(k) != new.get(k) for k in worker_keys
        ):
            differ = [k for k in run_keys if old.get(k) != new.get(k)] or ["run_fingerprint"]
            raise StoreError(
                f"resume=True {path}: the store was written by a different run "
                f"({', '.join(differ)} differ); "
                "pass the same settings, or overwrite=True to start again"
            )
        check_layout(path, layout, blocks, old, new)
        return done_blocks(path)
    create_store(
        path,
        layout,
        attrs=attrs,
        class_names=class_names,
        # an empty folder holds no store yet: resume starts one there, as at a new path
        overwrite=overwrite or (resume and found_at(path) is Found.EMPTY),
        background_index=background_index,
        blocks=blocks,
    )
    return set()


def _grid(shape: Sequence[int]) -> str:
    return "x".join(str(n) for n in shape)


def _array(path: Path, name: str) -> zarr.Array | None:
    """The store's array ``name`` (metadata only), or None when missing or unreadable."""
    try:
        return zarr.open_array(str(path / name), mode="r", zarr_format=2)
    except Exception:  # noqa: BLE001 - any array zarr cannot open does not match
        return None


def check_layout(
    path: Path,
    layout: StoreLayout,
    blocks: tuple[int, int],
    old: dict[str, Any],
    new: dict[str, Any],
) -> None:
    """Refuse (one line naming what differs) to resume a store whose arrays are not those
    this run would create: record arrays of the block grid ``blocks`` (rows, cols),
    ``labels`` (and ``confidence``, when present or asked for) of the layout's shape and
    chunks, and the recorded ``block_size`` attribute (``old``) equal to this run's
    (``new``). A record of another grid would mark other blocks done than it says."""
    differ: list[str] = []
    for name in (BLOCK_DONE, BLOCK_STARTED):
        array = _array(path, name)
        if array is None:
            differ.append(f"{name} is missing or unreadable")
        elif tuple(array.shape) != tuple(blocks):
            differ.append(
                f"{name} records a {_grid(array.shape)} block grid, this run's is {_grid(blocks)}"
            )
    shape, chunks = (layout.height, layout.width), (layout.chunk, layout.chunk)
    for name, wanted in ((LABELS, True), (CONFIDENCE, layout.with_confidence)):
        array = _array(path, name)
        if array is None:
            if wanted or (path / name).exists():
                differ.append(f"{name} is missing or unreadable")
            continue
        if tuple(array.shape) != shape:
            differ.append(f"{name} is {_grid(array.shape)} px, the scene {_grid(shape)}")
        if tuple(array.chunks) != chunks:
            differ.append(f"{name} has chunks of {_grid(array.chunks)} px, not {_grid(chunks)}")
    recorded, now = old.get("block_size"), new.get("block_size")
    if recorded is not None and now is not None and recorded != now:
        differ.append(f"its block size is {recorded!r} px, this run's {now!r}")
    if differ:
        raise StoreError(
            f"resume=True {path}: the store does not fit this run ({'; '.join(differ)}), so "
            "its completion records cannot be trusted; pass overwrite=True to start again"
        )
