"""What a run may find at its output path, checked before any cluster or store work.

``create_store`` and ``prepare`` (create.py, resume.py) decide what to do with a label
store of reattn-batch or an empty folder (``overwrite``, ``resume``). Anything else at the
path (create.py's :func:`~reattn_batch.store.create.check_usable`: a file, a folder of
other files, another Zarr, a symbolic link) and a path under a file are refused here, at
planning time, with one line that names what is there: no flag would let a run use it, so
the line asks for another path rather than a flag.
"""

from __future__ import annotations

import os
from pathlib import Path

from reattn_batch.store.create import Found, check_usable
from reattn_batch.workers.errors import StoreError


def check_out(out: str | os.PathLike) -> None:
    """Refuse an ``out`` that no run can write: an existing file, a folder of other files,
    a Zarr store reattn-batch did not make (or whose attributes are damaged), a symbolic
    link, or a path under a file. A new path, an empty folder and a label store of
    reattn-batch pass."""
    if check_usable(out) is not Found.NOTHING:
        return
    for parent in Path(out).absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise StoreError(
                    f"the output store {out} lies under {parent}, which is a file; "
                    "pass an out=path in a folder"
                )
            return
