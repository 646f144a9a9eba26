"""Outputs for people (SPEC 3.3, "Export"), each a module of its own, reading the store
through ``reattn_batch.store.open_store``:

    files.py       refusing to overwrite, atomic replacement, chunk-aligned windows
    cog.py         Cloud-Optimised GeoTIFF with palette and mode overviews
    quicklook.py   PNG colour map with a legend
    decimate.py    mode decimation (the quicklook's map, the viewer's overview)
    counts.py      pixel count of every label value (info, the quicklook's legend)
    info.py        per-class areas and the store's facts
    vector/        class polygons merged across blocks on Dask (.gpkg, .fgb, .parquet)
    stac.py        a STAC Item for the store (footprint, classes, run, assets)

A new export format is a module here plus one entry in ``pipeline/cli/export.py``'s
``EXPORTS``.
"""
