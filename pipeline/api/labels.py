"""``open_labels``: a label store as an xarray Dataset, georeferenced through rioxarray."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from reattn_batch.store.reader import open_store

if TYPE_CHECKING:
    import xarray as xr


def open_labels(store: str | os.PathLike) -> xr.Dataset:
    """The store ``reattn-batch run`` (or :func:`~reattn_batch.map_scene`) wrote, lazily.

    Variables: ``labels`` (y, x) uint8, 255 where no data, and ``confidence`` (y, x) uint8
    (max class probability x 254) where it was saved; x/y are pixel-centre coordinates in
    the scene's CRS (``ds.rio.crs``, ``ds.rio.transform()``). ``ds.attrs`` carries the run's
    attributes (fingerprint, model, settings) and ``class_names`` and ``colormap``
    ({class index: (r, g, b, a)}, 255 the nodata entry). A store still being written opens
    too; ``ds.attrs["complete"]`` says whether it is finished. Errors: StoreError.
    """
    import rioxarray  # noqa: F401  (registers .rio)
    import xarray as xr

    label_store = open_store(store)  # checks it is a label store: one line if not
    ds = xr.open_zarr(label_store.path, mask_and_scale=False, consolidated=None)
    ds.attrs["class_names"] = label_store.class_names
    ds.attrs["colormap"] = dict(label_store.colormap)
    if label_store.crs_wkt is not None and ds.rio.crs is None:
        ds = ds.rio.write_crs(label_store.crs_wkt)
    return ds
