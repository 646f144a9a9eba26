"""The scene job and the command line: reading, grids, block tasks, stitching,
Zarr writing (SPEC section 3)."""
