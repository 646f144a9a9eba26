"""Grids of a scene job (SPEC 3.1): the georeferenced native grid as odc-geo's GeoBox, the
one raster-grid type of the project (``raster``); model, crop and block grids (``grids``);
and the bilinear native <-> model resampling from global coordinates (``resample``; custom,
because bitwise-identical stitching needs values that do not depend on the window)."""
