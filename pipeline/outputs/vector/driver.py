"""The export on a Dask cluster: block tasks, seams, merge tasks, the file (see the package)."""

from __future__ import annotations

import math
import os
import shutil
import uuid
from typing import Any

from odc.geo.geobox import GeoboxTiles

from reattn_batch.outputs.vector.features import part_file
from reattn_batch.outputs.vector.merge import MergeJob, merge_groups, pack_groups
from reattn_batch.outputs.vector.polygonize import BlockJob, BlockResult, polygonize_block
from reattn_batch.outputs.vector.request import VectorRequest, VectorSummary, area_units
from reattn_batch.outputs.vector.seams import regions_across_blocks
from reattn_batch.outputs.vector.writers import metadata, write_features
from reattn_batch.settings import ClusterSettings


def export_vector(request: VectorRequest, client: Any) -> VectorSummary:
    """Polygonize the store on ``client``'s cluster and write ``request.out``."""
    from distributed import as_completed

    from reattn_batch.store import open_store

    ls = open_store(request.store)
    # Vertices go through the scene's transform with global pixel offsets (not each
    # tile's own transform), so that they do not depend on the block size.
    t = ls.geobox.transform
    transform = (t.a, t.b, t.c, t.d, t.e, t.f)
    pixel_area = abs(t.a * t.e - t.b * t.d)
    multi = request.connectivity == 8
    units = area_units(ls.crs_wkt)
    scene_height, scene_width = ls.geobox.shape.yx
    tiles = GeoboxTiles(ls.geobox, (request.block_size, request.block_size))
    grid = tiles.shape.yx  # (block rows, block cols)
    parts = request.out.absolute().parent / f".{request.out.name}.parts-{uuid.uuid4().hex[:8]}"
    parts.mkdir()
    try:
        jobs = [
            BlockJob(
                store=str(ls.path.absolute()),
                index=br * grid[1] + bc,
                row0=rows.start,
                col0=cols.start,
                height=rows.stop - rows.start,
                width=cols.stop - cols.start,
                scene_height=scene_height,
                scene_width=scene_width,
                classes=request.classes,
                class_names=request.class_names,
                connectivity=request.connectivity,
                simplify_px=request.simplify / math.sqrt(pixel_area),
                min_area=request.min_area,
                pixel_area=pixel_area,
                transform=transform,
                multi=multi,
                parts=str(parts),
            )
            for br in range(grid[0])
            for bc in range(grid[1])
            for rows, cols in [tiles.roi[br, bc]]  # row and column slices, clipped to the scene
        ]
        tag = uuid.uuid4().hex[:8]
        futures = client.map(
            polygonize_block, jobs, key=[f"polygonize-{tag}-{j.index}" for j in jobs]
        )
        results: dict[int, BlockResult] = {}
        for future in as_completed(futures):
            result = future.result()
            results[result.index] = result
            future.release()
        sizes: dict[int, int] = {}
        classes_of: dict[int, int] = {}
        for result in results.values():
            ids = result.border_ids.tolist()
            sizes.update(zip(ids, result.border_bytes.tolist(), strict=True))
            classes_of.update(zip(ids, result.border_classes.tolist(), strict=True))
        groups = regions_across_blocks(results, grid, request.connectivity, classes_of)
        merge_jobs = [
            MergeJob(
                index=k,
                groups=tuple(batch),
                class_names=request.class_names,
                min_area=request.min_area,
                pixel_area=pixel_area,
                transform=transform,
                multi=multi,
                parts=str(parts),
            )
            for k, batch in enumerate(pack_groups(groups, sizes))
        ]
        merged_futures = client.map(
            merge_groups, merge_jobs, key=[f"merge-{tag}-{j.index}" for j in merge_jobs]
        )
        written = sum(r.features for r in results.values())
        merged = 0
        for future in as_completed(merged_futures):
            n, m = future.result()
            written += n
            merged += m
        paths = [part_file(parts, "block", j.index) for j in jobs]
        paths += [part_file(parts, "merged", j.index) for j in merge_jobs]
        meta = metadata(request, ls.attrs, units)
        write_features(paths, request.out, request.format, ls.crs_wkt, multi, meta)
    finally:
        shutil.rmtree(parts, ignore_errors=True)
    return VectorSummary(
        out=request.out, features=written, merged=merged, blocks=len(jobs), area_units=units
    )


def vector_cluster(settings: ClusterSettings) -> ClusterSettings:
    """The cluster for polygonizing: ``settings`` as given, except that an embedded
    LocalCluster gets one worker per core by default (the block tasks are single-threaded
    OpenCV/GEOS work, not one model using every core)."""
    if settings.scheduler or settings.scheduler_file or settings.workers is not None:
        return settings
    return ClusterSettings(**{**settings.model_dump(), "workers": os.cpu_count() or 1})


def run_vector(request: VectorRequest, settings: ClusterSettings) -> VectorSummary:
    """``export_vector`` on the cluster of ``settings`` (``reattn_batch.run.cluster.connect``),
    see :func:`vector_cluster`."""
    from reattn_batch.run.cluster import connect

    with connect(vector_cluster(settings)) as (client, _info):
        return export_vector(request, client)
