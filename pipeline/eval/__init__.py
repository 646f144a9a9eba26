"""`eval` (SPEC 4): dataset presets and samples (``datasets``), settings grids on top of a
preset (``settings``), scoring images locally or on Dask (``runner``), mmseg's metrics
(``metrics``) and the JSON record and tables (``report``)."""
