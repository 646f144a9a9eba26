"""The Python API (the CLI is a layer on top of it): load the model, segment arrays, map
scenes on a Dask cluster, open the label stores.

| function      | in                                          | out                        |
|---------------|---------------------------------------------|----------------------------|
| load_model    | method, weights, upsampler, device, config  | Segmenter (torch module)   |
| segment       | numpy (H, W, 3) or DataArray (band, y, x)   | labels of the same kind    |
| map_scene     | scene path/URL, classes, store, Client      | RunSummary; a Zarr store   |
| open_labels   | a label store                               | xarray Dataset (rioxarray) |
"""

from reattn_batch.api.arrays import segment
from reattn_batch.api.labels import open_labels
from reattn_batch.api.model import load_model
from reattn_batch.api.scenes import map_scene

__all__ = ["load_model", "map_scene", "open_labels", "segment"]
