"""reattn-batch: training-free open-vocabulary mapping of remote-sensing scenes.

The one import name of the project. This folder (pipeline/) is the package itself: the
scene job, the command line and the Python API; ``reattn_batch.workers`` (workers/) is
what a Dask worker holds, the model; ``reattn_batch.configs`` (configs/) is configuration
as data (SPEC sections 2 and 3).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("reattn-batch")
except PackageNotFoundError:  # pragma: no cover - only when run from an uninstalled tree
    __version__ = "0+unknown"

# The public names, imported on first use so that ``import reattn_batch`` (and every
# submodule import, which runs this file first) stays light: no torch or dask until needed.
_PUBLIC = {
    "load_model": "reattn_batch.api",
    "segment": "reattn_batch.api",
    "map_scene": "reattn_batch.api",
    "open_labels": "reattn_batch.api",
    "Segmenter": "reattn_batch.workers.segmenter",
    "METHODS": "reattn_batch.workers.methods",
    "ReattnError": "reattn_batch.workers.errors",
    "InputError": "reattn_batch.workers.errors",
    "ModelError": "reattn_batch.workers.errors",
    "StoreError": "reattn_batch.workers.errors",
    "ClusterError": "reattn_batch.workers.errors",
}
__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    if name in _PUBLIC:
        import importlib

        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'reattn_batch' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
