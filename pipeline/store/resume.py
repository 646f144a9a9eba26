"""Create a store for a run, or reopen it for ``--resume`` (SPEC 3.5)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reattn_batch.store.attrs import checked_attrs, read_attrs
from reattn_batch.store.create import ZARR_MARKERS, create_store
from reattn_batch.store.layout import StoreLayout
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
    otherwise a UserError names the ``run_keys`` attributes that differ.
    """
    path = Path(path)
    if resume and path.is_dir() and any((path / name).exists() for name in ZARR_MARKERS):
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
        return done_blocks(path)
    create_store(
        path,
        layout,
        attrs=attrs,
        class_names=class_names,
        overwrite=overwrite,
        background_index=background_index,
        blocks=blocks,
    )
    return set()
