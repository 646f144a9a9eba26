"""What a run may find at its output path, checked before any cluster or store work.

``create_store`` and ``prepare`` (create.py, resume.py) decide what to do with a label
store of reattn-batch or an empty folder (``overwrite``, ``resume``). Anything else at the
path is refused here, at planning time, with one line that names what is there: no flag
would let a run use it, so the line asks for another path rather than a flag.
"""

from __future__ import annotations

import os
from pathlib import Path

from reattn_batch.store.create import ZARR_MARKERS, is_our_store
from reattn_batch.workers.errors import StoreError


def check_out(out: str | os.PathLike) -> None:
    """Refuse an ``out`` that no run can write: an existing file, a folder of other files,
    a Zarr store reattn-batch did not make (or whose attributes are damaged), or a path
    under a file. A new path, an empty folder, a label store of reattn-batch and a symbolic
    link (create_store's to judge) pass."""
    path = Path(out)
    if path.is_symlink():
        return  # create_store decides (it never deletes through a link)
    if not path.exists():
        for parent in path.absolute().parents:
            if parent.exists():
                if not parent.is_dir():
                    raise StoreError(
                        f"the output store {out} lies under {parent}, which is a file; "
                        "pass an out= path in a folder"
                    )
                return
        return
    if path.is_dir() and (is_our_store(path) or not any(path.iterdir())):
        return
    if not path.is_dir():
        what = "a file"
    elif any((path / name).exists() for name in ZARR_MARKERS):
        what = "a Zarr store that is not a readable label store of reattn-batch"
    else:
        what = "a folder of other files"
    raise StoreError(
        f"{out} exists and is {what}: overwrite=True replaces only a label store "
        "reattn-batch made and resume=True finishes only one; move it away or pass "
        "another out= path"
    )
