"""Georeferencing attributes of the store (SPEC 3.3), from libraries where they exist.

- CF grid mapping (``crs_wkt``, ``spatial_ref``, ``GeoTransform`` and pyproj's CF keys):
  rioxarray's ``write_crs``/``write_transform``, the attributes rioxarray itself reads;
- pixel-centre x/y coordinates (written out: odc-geo's differ in the last bits), the
  ``proj:``/``spatial:`` Zarr convention attributes, and CF attributes of x/y.

GDAL, xarray and rioxarray read the result (tests/test_store.py).
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import numpy as np

from reattn_batch.store.layout import StoreLayout

_PROJ_CONVENTION = {
    "schema_url": "https://raw.githubusercontent.com/zarr-experimental/geo-proj/refs/tags/v1/schema.json",
    "spec_url": "https://github.com/zarr-experimental/geo-proj/blob/v1/README.md",
    "uuid": "f17cb550-5864-4468-aeb7-f3180cfb622f",
    "name": "proj:",
    "description": "Coordinate reference system information for geospatial data",
}


_SPATIAL_CONVENTION = {
    "schema_url": "https://raw.githubusercontent.com/zarr-conventions/spatial/refs/tags/v1/schema.json",
    "spec_url": "https://github.com/zarr-conventions/spatial/blob/v1/README.md",
    "uuid": "689b58e2-cf7b-45e0-9fff-9cfc0883d6b4",
    "name": "spatial",
    "description": "Spatial coordinate information",
}


def grid_mapping_attrs(layout: StoreLayout) -> dict[str, Any]:
    """CF grid-mapping attributes of ``spatial_ref``, as rioxarray writes them: those of
    the CRS (computed once per CRS: a regional job's scenes share a few), then the
    ``GeoTransform``."""
    import rioxarray  # noqa: F401  (registers the .rio accessor)
    import xarray as xr

    probe = xr.DataArray(np.zeros((1, 1), np.uint8), dims=("y", "x"))
    probe = probe.rio.write_transform(layout.transform)
    return {**_crs_grid_mapping(layout.crs_wkt), **probe[probe.rio.grid_mapping].attrs}


@functools.lru_cache(maxsize=64)
def _crs_grid_mapping(crs_wkt: str) -> dict[str, Any]:
    """rioxarray's CF grid-mapping attributes of one CRS (a fresh copy is made by the
    caller's dict merge, so the cached one is never changed)."""
    import rioxarray  # noqa: F401  (registers the .rio accessor)
    import xarray as xr

    # the CRS is valid WKT: grid/raster.py checked it when the GeoBox was built
    probe = xr.DataArray(np.zeros((1, 1), np.uint8), dims=("y", "x"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pyproj warns when a CRS has no CF mapping
        probe = probe.rio.write_crs(crs_wkt)
    return dict(probe[probe.rio.grid_mapping].attrs)


def pixel_centres(layout: StoreLayout) -> tuple[np.ndarray, np.ndarray]:
    """(x (width,), y (height,)) float64 CRS coordinates of pixel centres.

    x[col] = c + a * (col + 0.5), y[row] = f + e * (row + 0.5) for transform (a, b, c, d, e, f).
    Written out rather than taken from odc-geo's ``GeoBox.coordinates``, whose values
    differ from these in the last bits for non-round transforms (tests/test_store.py).
    """
    t = layout.transform
    x = t.c + t.a * (np.arange(layout.width, dtype=np.float64) + 0.5)
    y = t.f + t.e * (np.arange(layout.height, dtype=np.float64) + 0.5)
    return x, y


def bbox(layout: StoreLayout) -> list[float]:
    """[xmin, ymin, xmax, ymax] of the pixel edges, in CRS units."""
    t = layout.transform
    xs = (t.c, t.c + t.a * layout.width)
    ys = (t.f, t.f + t.e * layout.height)
    return [float(min(xs)), float(min(ys)), float(max(xs)), float(max(ys))]


def _proj_attrs(crs_wkt: str) -> dict[str, Any]:
    """The ``proj:`` convention attributes: WKT2 and, if the CRS has one, its EPSG code."""
    from rasterio.crs import CRS

    crs = CRS.from_wkt(crs_wkt)
    out: dict[str, Any] = {"proj:wkt2": crs.to_wkt(version="WKT2_2019")}
    epsg = crs.to_epsg()
    if epsg is not None:
        out["proj:code"] = f"EPSG:{epsg}"
    return out


def axis_attrs(crs_wkt: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """CF attributes of the x and y coordinate arrays."""
    if crs_wkt is None:
        return (
            {"long_name": "pixel column (centre)", "units": "pixel", "axis": "X"},
            {"long_name": "pixel row (centre)", "units": "pixel", "axis": "Y"},
        )
    from rasterio.crs import CRS

    crs = CRS.from_wkt(crs_wkt)
    if crs.is_geographic:
        return (
            {"standard_name": "longitude", "units": "degrees_east", "axis": "X"},
            {"standard_name": "latitude", "units": "degrees_north", "axis": "Y"},
        )
    units = crs.linear_units or "unknown"
    return (
        {"standard_name": "projection_x_coordinate", "units": units, "axis": "X"},
        {"standard_name": "projection_y_coordinate", "units": units, "axis": "Y"},
    )


def convention_attrs(layout: StoreLayout) -> dict[str, Any]:
    """The ``spatial:`` (and, with a CRS, ``proj:``) Zarr convention attributes."""
    spatial = {
        "spatial:dimensions": ["y", "x"],
        "spatial:transform": [float(v) for v in tuple(layout.transform)[:6]],
        "spatial:transform_type": "affine",
        "spatial:shape": [layout.height, layout.width],
        "spatial:bbox": bbox(layout),
        "spatial:registration": "pixel",
    }
    if layout.crs_wkt is None:
        return {"zarr_conventions": [_SPATIAL_CONVENTION], **spatial}
    conventions = {"zarr_conventions": [_PROJ_CONVENTION, _SPATIAL_CONVENTION]}
    return {**conventions, **_proj_attrs(layout.crs_wkt), **spatial}
