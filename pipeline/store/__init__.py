"""The output label store: one Zarr group per scene (SPEC 3.3, 3.5). The layout is
described in ``layout.py``.

    layout.py    names, chunking, compressor, NODATA, StoreLayout
    georef.py    CF grid mapping (rioxarray), pixel centres, proj:/spatial: attrs
    palette.py   class colours, colour map and flag attributes
    attrs.py     JSON-clean group attributes, read and update
    create.py    create_store: every array and attribute, no label data; what is at a
                 store path (found_at) and whether a run may use it (check_usable)
    arrays.py    write_block (from any number of processes), open_labels
    records.py   per-block completion records
    resume.py    prepare: create, or reopen for --resume (checked against the run's layout)
    lock.py      one writer per store (and per job output root): the lock file primitive;
                 an export's shared lock
    reader.py    LabelStore: a store opened for outputs; the read commands' door
    target.py    check_out: what a run may find at its output path
"""

from reattn_batch.store.arrays import open_labels, write_block
from reattn_batch.store.attrs import jsonable, read_attrs, update_attrs
from reattn_batch.store.create import check_not_input, create_store
from reattn_batch.store.layout import (
    BLOCK_DONE,
    BLOCK_STARTED,
    CHUNK,
    CONFIDENCE,
    GRID_MAPPING,
    LABELS,
    NODATA,
    StoreLayout,
)
from reattn_batch.store.lock import LockHeld, lock_store, share_store, store_is_busy
from reattn_batch.store.palette import class_palette
from reattn_batch.store.reader import (
    LabelStore,
    label_store,
    open_for_reading,
    open_store,
    warn_unfinished,
)
from reattn_batch.store.records import (
    block_grid,
    done_blocks,
    mark_block_done,
    mark_block_started,
    started_blocks,
)
from reattn_batch.store.resume import prepare

__all__ = [
    "BLOCK_DONE",
    "check_not_input",
    "BLOCK_STARTED",
    "CHUNK",
    "CONFIDENCE",
    "GRID_MAPPING",
    "LABELS",
    "NODATA",
    "LabelStore",
    "LockHeld",
    "StoreLayout",
    "block_grid",
    "class_palette",
    "create_store",
    "done_blocks",
    "jsonable",
    "label_store",
    "lock_store",
    "mark_block_done",
    "mark_block_started",
    "open_labels",
    "open_for_reading",
    "open_store",
    "prepare",
    "read_attrs",
    "share_store",
    "started_blocks",
    "store_is_busy",
    "update_attrs",
    "warn_unfinished",
    "write_block",
]
