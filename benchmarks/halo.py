"""Halo redundancy of the default block (``--block-size auto``) and of fixed sizes, on
64 MP and 400 MP scenes, with and without --gsd. Pure arithmetic (no model, no data):

    python benchmarks/halo.py            # Markdown table for the README

Redundancy = crops run by all blocks / crops of the global grid - 1
(``BlockGrid.halo_redundancy``, computed separably per axis). ``f`` = native GSD /
model GSD (``--gsd``): 1 = no resampling. No memory cap is applied here (the memory
guard caps ``auto`` by the workers' memory at run time); the ``task GiB`` column is the
guard's estimate for the auto block with 6 text queries, batch 1, rank-reduced jbu.
"""

from __future__ import annotations

import argparse
import time

from reattn_batch.grid.block_size import choose_block_size
from reattn_batch.grid.grids import BlockGrid, ModelGrid
from reattn_batch.run.guard import estimate_block_memory

SCENES = {"64 MP": 8000, "400 MP": 20000}
FACTORS = (1.0, 0.77, 0.5, 1.6)
FIXED = (2048, 3584, 4096)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crop", type=int, default=224)
    parser.add_argument("--stride", type=int, default=112)
    args = parser.parse_args()
    head = " | ".join(f"block {b}" for b in FIXED)
    print(f"| scene | f (native/model GSD) | auto block | auto halo | task GiB | {head} | time |")
    print("|---|---|---|---|---|" + "---|" * len(FIXED) + "---|")
    for name, size in SCENES.items():
        for f in FACTORS:
            grid = ModelGrid.for_gsd((size, size), 1.0, 1.0 / f)
            start = time.perf_counter()
            choice = choose_block_size(grid, args.crop, args.stride)
            took = time.perf_counter() - start
            chosen = BlockGrid(grid, choice.block, args.crop, args.stride)
            memory = estimate_block_memory(
                chosen, queries=6, batch=1, upsampler="jbu_one", channels=196
            ).total
            fixed = " | ".join(
                f"{100 * BlockGrid(grid, b, args.crop, args.stride).halo_redundancy():.1f} %"
                for b in FIXED
            )
            print(
                f"| {name} ({size}^2) | {f:g} | {choice.block} | "
                f"{100 * choice.redundancy:.1f} % | {memory / 2**30:.1f} | {fixed} | "
                f"{1000 * took:.0f} ms |"
            )


if __name__ == "__main__":
    main()
