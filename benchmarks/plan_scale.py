"""Driver cost of a huge region (issue 11 item 6): plan, records and submission
bookkeeping for a synthetic ~100k-block grid, timed and with peak memory.

No scene and no cluster: it runs what the driver does per run and per block around the
Dask calls, on a grid of ``--blocks`` blocks of ``--block`` px:

    grid      BlockGrid + crop count (counted, never listed)
    store     create_store with the (rows, cols) record arrays
    resume    done_blocks + started_blocks (what --resume reads) and the todo list
    records   RunRecords: started + done for every block, flushed every --flush blocks
    blocks    block_at(i) for 100 blocks (what each task computes; not in the heap peak)

Prints one JSON line: seconds per step, the peak Python heap (tracemalloc) and the
process's peak RSS (resource.getrusage, includes the interpreter and libraries).

    PYTHONPATH=. python benchmarks/plan_scale.py --blocks 100000 --block 2048
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import tempfile
import time
import tracemalloc
from pathlib import Path

from affine import Affine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=100_000)
    parser.add_argument("--block", type=int, default=2048, help="block edge, native px")
    parser.add_argument("--flush", type=int, default=1000, help="blocks between flushes")
    args = parser.parse_args()

    from odc.geo.geobox import GeoBox

    from reattn_batch.grid.grids import BlockGrid, ModelGrid
    from reattn_batch.store import StoreLayout, create_store, done_blocks, started_blocks
    from reattn_batch.store.records import RunRecords

    baseline_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # after imports
    side = math.ceil(math.sqrt(args.blocks))
    shape = (side * args.block, side * args.block)
    seconds: dict[str, float] = {}
    tracemalloc.start()
    t = time.perf_counter()
    grid = BlockGrid(
        model_grid=ModelGrid.for_gsd(shape, 0.5, 0.5), block=args.block, crop=224, stride=112
    )
    crops = grid.crop_count
    seconds["grid"] = time.perf_counter() - t

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "s.zarr"
        t = time.perf_counter()
        create_store(
            out,
            StoreLayout(GeoBox(shape, Affine(0.5, 0, 0, 0, -0.5, 0), None)),
            attrs={},
            class_names=["background", "building"],
            blocks=grid.counts,
        )
        seconds["store"] = time.perf_counter() - t

        t = time.perf_counter()
        done = done_blocks(out)
        in_flight = started_blocks(out) - done
        todo = [i for i in range(len(grid)) if i not in done]
        seconds["resume"] = time.perf_counter() - t

        t = time.perf_counter()
        records = RunRecords(out, interval=math.inf)
        for n, index in enumerate(todo, 1):
            records.started(index)
            records.done(index)
            if n % args.flush == 0:
                records.flush()
        records.flush()
        seconds["records"] = time.perf_counter() - t
        files = (out / "block_done").rglob("*")
        record_files = sum(p.is_file() and p.name[0] != "." for p in files)
        assert len(done_blocks(out)) == len(grid)

        _, heap = tracemalloc.get_traced_memory()
        tracemalloc.stop()  # its overhead would dominate the next step
        t = time.perf_counter()
        step = max(1, len(grid) // 100)
        for index in range(0, len(grid), step):
            grid.block_at(index)
        seconds["blocks_per_100"] = time.perf_counter() - t
    print(
        json.dumps(
            {
                "blocks": len(grid),
                "grid": list(grid.counts),
                "scene_px": list(shape),
                "crops": crops,
                "in_flight": len(in_flight),
                "record_files": record_files,
                "seconds": {k: round(v, 3) for k, v in seconds.items()},
                "peak_heap_mib": round(heap / 2**20, 1),
                "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "rss_after_imports_mib": round(baseline_rss, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
