"""Worker memory of `export --vector` against scene size (target: flat).

Builds synthetic label stores of N x N pixels (default 4000 and 8000: 16 and 64 MP,
EPSG:25832, 0.5 m, 512 chunks, block size 2048) whose labels are a deterministic function
of global pixel coordinates, written block by block (the script never holds a whole
scene either): 5 classes, each a smooth value-noise field at a 96 px cell plus a 24 px
one, the label the argmax, so regions run from a few pixels to tens of thousands, with
ragged outlines, crossing every block edge. Each size is exported (``export_vector``)
on a FRESH embedded cluster (``reattn_batch.run.cluster.connect``, N local worker processes of
one thread), so each worker's peak RSS (Linux VmHWM high-water mark, read from every
worker at the end) belongs to that size alone. The driver's own high-water mark is
printed too (it only grows: read it for the largest size).

    python benchmarks/vector_export.py                    # 16 and 64 MP, 2 workers
    python benchmarks/vector_export.py --sizes 2000 4000 --workers 1 --format .fgb
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import resource
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from affine import Affine
from odc.geo.geobox import GeoBox
from rasterio.crs import CRS

from reattn_batch.outputs import vector
from reattn_batch.run.cluster import connect
from reattn_batch.settings import ClusterSettings
from reattn_batch.store import StoreLayout, create_store, write_block

CLASSES = ["background", "building", "road", "water", "tree"]
BLOCK = 2048
CELLS = (96, 24)  # value-noise cell sizes in pixels, coarse and fine
WEIGHTS = (1.0, 0.35)


def noise_grids(n: int, seed: int) -> list[np.ndarray]:
    """Per class and scale, the random values on the coarse grid (small: n / cell)."""
    rng = np.random.default_rng(seed)
    return [rng.random((len(CLASSES), n // cell + 2, n // cell + 2)) for cell in CELLS]


def block_labels(grids, r0: int, c0: int, h: int, w: int) -> np.ndarray:
    """(h, w) uint8 labels of the window: argmax over classes of bilinear value noise."""
    best = np.full((h, w), -np.inf, np.float32)
    labels = np.zeros((h, w), np.uint8)
    for k in range(len(CLASSES)):
        score = np.zeros((h, w), np.float32)
        for grid, cell, weight in zip(grids, CELLS, WEIGHTS, strict=True):
            g = grid[k].astype(np.float32)
            gy = (np.arange(r0, r0 + h) + 0.5) / cell
            gx = (np.arange(c0, c0 + w) + 0.5) / cell
            iy, ix = gy.astype(int), gx.astype(int)
            fy = (gy - iy).astype(np.float32)[:, None]
            fx = (gx - ix).astype(np.float32)[None, :]
            top = g[iy][:, ix] * (1 - fx) + g[iy][:, ix + 1] * fx
            bottom = g[iy + 1][:, ix] * (1 - fx) + g[iy + 1][:, ix + 1] * fx
            score += weight * (top * (1 - fy) + bottom * fy)
        better = score > best
        labels[better] = k
        best[better] = score[better]
    return labels


def make_store(path: Path, n: int, seed: int = 0) -> None:
    layout = StoreLayout(
        GeoBox((n, n), Affine(0.5, 0, 356000, 0, -0.5, 5645000), CRS.from_epsg(25832).to_wkt()),
        512,
    )
    attrs = {"classes": {"names": CLASSES, "background_index": 0}, "block_size": BLOCK}
    create_store(path, layout, attrs=attrs, class_names=CLASSES)
    grids = noise_grids(n, seed)
    for r0 in range(0, n, BLOCK):
        for c0 in range(0, n, BLOCK):
            h, w = min(BLOCK, n - r0), min(BLOCK, n - c0)
            write_block(path, r0, c0, block_labels(grids, r0, c0, h, w))


def peak_rss_mb() -> float:
    """This process's peak resident set size in MB: Linux's VmHWM, the high-water mark of
    its own address space (``getrusage``'s ru_maxrss would carry over the parent's peak
    across fork and exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[4000, 8000], help="edge in px")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--format", default=".gpkg", choices=sorted(vector.FORMATS))
    ap.add_argument("--simplify", type=float, default=0.0)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()

    rows = []
    with tempfile.TemporaryDirectory(prefix="vector-bench-") as tmp:
        for n in args.sizes:
            store = Path(tmp) / f"s{n}.labels.zarr"
            t0 = time.perf_counter()
            # In a child process, so that this driver's peak RSS is the export's alone.
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                pool.submit(make_store, store, n).result()
            made = time.perf_counter() - t0
            out = Path(tmp) / f"s{n}{args.format}"
            request = vector.plan_vector(store, out, simplify=args.simplify)
            with connect(ClusterSettings(workers=args.workers, threads_per_worker=1)) as (
                client,
                _info,
            ):
                t0 = time.perf_counter()
                summary = vector.export_vector(request, client)
                seconds = time.perf_counter() - t0
                worker_peaks = sorted(client.run(peak_rss_mb).values())
            row = {
                "megapixels": n * n / 1e6,
                "blocks": summary.blocks,
                "features": summary.features,
                "merged_across_blocks": summary.merged,
                "export_seconds": round(seconds, 1),
                "worker_peak_rss_mb": [round(v) for v in worker_peaks],
                "driver_peak_rss_mb_so_far": round(peak_rss_mb()),  # cluster start included
                "output_mb": round(out.stat().st_size / 2**20, 1),
                "store_build_seconds": round(made, 1),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
            shutil.rmtree(store)
    first, last = rows[0], rows[-1]
    ratio = max(last["worker_peak_rss_mb"]) / max(first["worker_peak_rss_mb"])
    summary = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.platform()}",
        "settings": {
            "workers": args.workers,
            "threads_per_worker": 1,
            "block": BLOCK,
            "format": args.format,
            "simplify": args.simplify,
            "connectivity": vector.DEFAULT_CONNECTIVITY,
        },
        "runs": rows,
        "worker_peak_ratio_largest_vs_smallest": round(ratio, 3),
    }
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
