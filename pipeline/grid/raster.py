"""The one raster-grid concept: odc-geo's :class:`~odc.geo.geobox.GeoBox`.

A scene (``SceneInfo``), its label store (``StoreLayout``, ``LabelStore``) and the
source's tiling the memory guard sees (``guard.Source``) all carry one ``GeoBox``: shape
``(ny, nx)`` = (rows, cols), the affine pixel (col, row) -> CRS (x, y) transform in the
upper-left-corner convention (rasterio's ``dataset.transform``) and the CRS (None: a
scene without one, whose x/y are pixel coordinates). Tilings of a grid are
``GeoboxTiles`` (a GeoBox) or ``odc.geo.roi.Tiles`` (a shape only).

The CRS keeps the WKT it was built from, byte for byte: odc-geo's ``CRS`` holds pyproj's
``srs``, the input text, and ``str(crs)`` returns it (:func:`crs_wkt`); the store writes
that text where today's stores have it (GDAL's ``_CRS``), so georeferencing does not
change with the grid type (tests/test_store.py compares with rasterio).
"""

from __future__ import annotations

from affine import Affine
from odc.geo.geobox import GeoBox

from reattn_batch.workers.errors import InputError


def raster_geobox(shape: tuple[int, int], transform: Affine, crs_wkt: str | None) -> GeoBox:
    """The GeoBox of a ``shape`` (rows, cols) raster with ``transform`` and a CRS as WKT
    (None: none). A CRS that is not WKT pyproj parses is a UserError (one line)."""
    if crs_wkt is not None:
        from pyproj import CRS as ProjCRS

        try:
            ProjCRS.from_wkt(crs_wkt)
        except Exception as exc:  # pyproj raises CRSError; keep the message
            raise InputError(
                f"the scene's CRS is not valid WKT ({exc}); fix or assign the CRS"
            ) from None
    return GeoBox((int(shape[0]), int(shape[1])), transform, crs_wkt)


def crs_wkt(geobox: GeoBox) -> str | None:
    """The CRS of ``geobox`` as the WKT it was built from (verbatim), or None."""
    return None if geobox.crs is None else str(geobox.crs)


class OnGeobox:
    """Shape, transform and CRS of a type that carries a ``geobox`` (SceneInfo,
    StoreLayout, LabelStore): read from it, never stored twice."""

    geobox: GeoBox

    @property
    def height(self) -> int:
        return self.geobox.height

    @property
    def width(self) -> int:
        return self.geobox.width

    @property
    def transform(self) -> Affine:
        """Pixel (col, row) -> CRS (x, y), upper-left-corner convention."""
        return self.geobox.transform

    @property
    def crs_wkt(self) -> str | None:
        """The CRS as the WKT the source gave (verbatim), or None."""
        return crs_wkt(self.geobox)
