"""Last step of a run: the store marked complete with its counters, and the summary."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from reattn_batch import store


@dataclasses.dataclass(frozen=True)
class RunSummary:
    out: Path
    blocks: int
    computed: int
    skipped: int
    crops: int
    megapixels_per_second: float
    crops_in_scene: int = 0  # crops of the global grid holding data, run by this run's blocks
    seconds: dict = dataclasses.field(default_factory=dict)  # by phase, summed over tasks
    facts: dict = dataclasses.field(default_factory=dict)  # device, dtype, batch_size
    block_size: int = 0


def finish(
    out: str,
    *,
    todo: int,
    done: int,
    in_flight: int,
    crops_run: int,
    crops_total: int,
    megapixels_per_second: float,
) -> None:
    """Mark the store complete and record this run's counters in it: blocks computed,
    done before, recomputed (in flight when the previous run stopped); crops evaluated
    (halo duplicates included, all-nodata skipped) of those the computed blocks touch."""
    store.update_attrs(
        out,
        complete=True,
        blocks_computed_last_run=todo,
        blocks_done_before_last_run=done,
        blocks_recomputed_last_run=in_flight,
        crops_run=crops_run,
        crops_total=crops_total,
        megapixels_per_second=round(megapixels_per_second, 4),
    )
