"""Blocks (SPEC 3.1, 3.4): the one Dask task per output block (``task``), how it reads its
pixels (``reading``) and how a run submits its tasks, a bounded window at a time (``submit``)."""
