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
