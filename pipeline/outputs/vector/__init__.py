"""Class polygons of a label store (SPEC 3.3 "Export", issue 12): one feature per connected
region of a class, seamless across blocks, computed block by block on a Dask cluster.

How it stays exact and bounded (no task and not the driver ever holds the whole raster):

1. One task per block (``polygonize_block``) reads only its own window of ``labels``,
   labels the connected regions of each class inside it (OpenCV, 4- or 8-connectivity),
   and polygonizes them (GDAL through ``rasterio.features.shapes``) in *pixel* coordinates,
   where every vertex is an integer and unions are exact. Regions that do not touch an
   internal block edge are final: the task writes them, in the store's CRS, to a part
   file. Regions that touch one are written, still in pixels, to a "border" part file,
   and the task returns the region ids along its four edges (a few KB).
2. The driver pairs the ids across every internal edge (same class, 4- or 8-neighbours;
   8 also across block corners) and takes the connected components of that graph
   (networkx): each component is one region of the whole raster, split over blocks.
3. Merge tasks (``merge_groups``) each take a batch of components, packed so that the
   polygons one task unions stay under ``MERGE_BUDGET_BYTES`` (a single component larger
   than that gets a task of its own: it is one output feature, and no smaller), read just
   those pieces, union them, and write the merged features.
4. The driver streams the part files, one at a time, into GeoPackage / FlatGeobuf (GDAL
   via ``pyogrio.write_arrow``) or GeoParquet (``pyarrow``), and deletes them.

The result equals polygonizing the whole raster at once: the same regions, the same
outlines (redundant collinear vertices where pieces met are removed; tested against
``rasterio.features.shapes`` on the whole raster). ``area`` is the region's pixel count
times the pixel area, in the CRS's units squared (named in the file's metadata).

``--simplify`` keeps neighbours meeting: each block's full coverage (every value, nodata
and background included) is simplified with GEOS's coverage simplifier, which moves each
shared edge once for both sides, with the block's own outline held fixed, so pieces still
meet exactly at block edges and are then merged as above.

Part files live in a temporary folder beside the output, which the workers must be able to
write (as they write the store in ``run``); it is removed at the end.

Modules: ``request`` (checks, defaults), ``polygonize`` (the block task), ``seams``
(regions across block edges), ``merge`` (packing and merge tasks), ``features`` (ids, part
files, columns), ``writers`` (the output file), ``driver`` (the job on a cluster).
"""

from reattn_batch.outputs.vector.driver import export_vector, run_vector, vector_cluster
from reattn_batch.outputs.vector.merge import (
    MERGE_BUDGET_BYTES,
    MergeJob,
    merge_groups,
    pack_groups,
)
from reattn_batch.outputs.vector.polygonize import (
    BlockJob,
    BlockResult,
    components,
    polygonize_block,
)
from reattn_batch.outputs.vector.request import (
    CONNECTIVITIES,
    DEFAULT_BLOCK,
    DEFAULT_CONNECTIVITY,
    FORMATS,
    VectorRequest,
    VectorSummary,
    area_units,
    plan_vector,
)
from reattn_batch.outputs.vector.seams import regions_across_blocks, seam_pairs
from reattn_batch.outputs.vector.writers import LAYER, write_features

__all__ = [
    "CONNECTIVITIES",
    "DEFAULT_BLOCK",
    "DEFAULT_CONNECTIVITY",
    "FORMATS",
    "LAYER",
    "MERGE_BUDGET_BYTES",
    "BlockJob",
    "BlockResult",
    "MergeJob",
    "VectorRequest",
    "VectorSummary",
    "area_units",
    "components",
    "export_vector",
    "merge_groups",
    "pack_groups",
    "plan_vector",
    "polygonize_block",
    "regions_across_blocks",
    "run_vector",
    "seam_pairs",
    "vector_cluster",
    "write_features",
]
