"""How fast `reattn-batch view` serves a large store: start-up (the class areas of `info`),
the one-off label overview, and label tiles at full resolution and at low zooms.

    python benchmarks/viewer_tiles.py [--size 20000] [--keep DIR]

Builds a synthetic size x size store (1 m pixels, UTM 32N, 512 px chunks, a checkerboard of
4 classes in 1000 px squares) with the store module, then times the viewer's own calls in
this process (no HTTP, no browser). Prints one line per figure.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from affine import Affine  # noqa: E402
from odc.geo.geobox import GeoBox  # noqa: E402
from pyproj import Transformer  # noqa: E402
from rasterio.crs import CRS  # noqa: E402

from reattn_batch.store import StoreLayout, create_store, write_block  # noqa: E402

CLASSES = ["background", "building", "road", "water"]


def build(path: Path, size: int, block: int = 4096) -> None:
    transform = Affine(1.0, 0, 300000, 0, -1.0, 5700000)
    layout = StoreLayout(GeoBox((size, size), transform, CRS.from_epsg(32632).to_wkt()), chunk=512)
    create_store(path, layout, attrs={}, class_names=CLASSES, overwrite=True)
    for r0 in range(0, size, block):
        for c0 in range(0, size, block):
            rows = np.arange(r0, min(size, r0 + block))[:, None] // 1000
            cols = np.arange(c0, min(size, c0 + block))[None, :] // 1000
            write_block(path, r0, c0, ((rows + 2 * cols) % 4).astype(np.uint8))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=20000, help="store side in pixels")
    parser.add_argument("--keep", type=Path, help="build the store here and keep it")
    args = parser.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp())
    store = folder / f"synthetic_{args.size}.labels.zarr"
    if not store.exists():
        t = time.perf_counter()
        build(store, args.size)
        print(f"built {args.size}x{args.size} store in {time.perf_counter() - t:.1f} s")

    from reattn_batch.viewer.store_view import StoreView
    from reattn_batch.viewer.tile_grid import web_mercator

    t = time.perf_counter()
    viewer = StoreView(store)
    print(f"start-up (class areas: one pass over the store): {time.perf_counter() - t:.1f} s")
    tiler = viewer.labels
    t = time.perf_counter()
    tiler.overview()  # started in the background by StoreView; wait for it
    print(f"label overview (mode, 1/8, one pass, after start-up): +{time.perf_counter() - t:.1f} s")
    cx, cy = tiler.transform @ (tiler.width / 2, tiler.height / 2)
    lon, lat = Transformer.from_crs(tiler.to_store.target_crs, 4326, always_xy=True).transform(
        cx, cy
    )
    native = tiler.native_zoom()
    for z in range(native + 1, tiler.min_zoom() - 1, -1):
        centre = web_mercator().tile(lon, lat, z)
        times, kinds = [], set()
        for dx in (-1, 0, 1):
            for dy in (-1, 0, 1):
                start = time.perf_counter()
                tiler.render(z, centre.x + dx, centre.y + dy)
                times.append(time.perf_counter() - start)
                kind, what = tiler.last_read.value
                kinds.add(f"{kind} {what}")
        print(
            f"zoom {z}: 9 tiles, median {1000 * statistics.median(times):.0f} ms, "
            f"max {1000 * max(times):.0f} ms ({'; '.join(sorted(kinds))})"
        )


if __name__ == "__main__":
    main()
