"""Create a store for a run, or reopen it for ``--resume`` (SPEC 3.5)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.store.attrs import checked_attrs, read_attrs
from pipeline.store.create import create_store, looks_like_zarr
from pipeline.store.layout import StoreLayout
from pipeline.store.records import done_blocks
from workers.errors import UserError


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
) -> set[int]:
    """Create the store, or open it for ``resume``; returns the blocks already done.

    A resumed store must have been written by the same run (same ``run_fingerprint``);
    otherwise a UserError names the ``run_keys`` attributes that differ.
    """
    path = Path(path)
    if resume and looks_like_zarr(path):
        old = read_attrs(path)
        if old.get("run_fingerprint") != attrs.get("run_fingerprint"):
            new = checked_attrs(attrs)
            differ = [k for k in run_keys if old.get(k) != new.get(k)] or ["run_fingerprint"]
            raise UserError(
                f"--resume {path}: the store was written by a different run "
                f"({', '.join(differ)} differ); "
                "pass the same settings, or --overwrite to start again"
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
