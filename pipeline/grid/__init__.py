"""Grids of a scene job (SPEC 3.1): native, model, crop and block grids (``grids``), and the
bilinear native <-> model resampling from global coordinates (``resample``; custom, because
bitwise-identical stitching needs values that do not depend on the window)."""
