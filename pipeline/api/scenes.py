"""``map_scene``: the Dask job of ``reattn-batch run`` from Python, on the caller's
``distributed.Client`` when given one (the convention of Dask libraries), else on an
embedded LocalCluster or the scheduler named."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reattn_batch.api.model import class_list, model_spec
from reattn_batch.run.summary import RunSummary
from reattn_batch.settings import (
    DEFAULT_BLOCK_SIZE,
    DEFAULT_NO_WORKER_TIMEOUT,
    ClusterSettings,
    SceneSettings,
    from_keywords,
    require_background,
)
from reattn_batch.workers.classes import ClassList
from reattn_batch.workers.errors import InputError
from reattn_batch.workers.segmenter import Segmenter

if TYPE_CHECKING:
    from distributed import Client


def map_scene(
    scene: str | os.PathLike,
    classes: str | Sequence[str] | ClassList,
    out: str | os.PathLike | None = None,
    client: Client | None = None,
    *,
    model: Segmenter | None = None,
    overwrite: bool = False,
    resume: bool = False,
    background: bool = True,
    gsd: float | None = None,
    block_size: int | str = DEFAULT_BLOCK_SIZE,
    bands: Sequence[int] | None = None,
    stretch: tuple[float, float] | None = None,
    variable: str | None = None,
    asset: str | None = None,
    save_confidence: bool = False,
    no_worker_timeout: float = DEFAULT_NO_WORKER_TIMEOUT,
    scheduler: str | None = None,
    scheduler_file: str | os.PathLike | None = None,
    workers: int | None = None,
    threads_per_worker: int | None = None,
    **model_keywords: Any,
) -> RunSummary:
    """Map a whole scene into a georeferenced label Zarr store, as ``reattn-batch run``.

    scene: a GeoTIFF/COG path or URL, a Zarr store or a STAC Item. out: the store (default
    ``<scene stem>.labels.zarr`` in the working folder). client: a connected
    ``distributed.Client`` whose workers run the job (left open); without one,
    ``scheduler``/``scheduler_file`` name an existing scheduler, else an embedded
    LocalCluster of ``workers`` x ``threads_per_worker`` runs it and is closed after.
    model: a :func:`~reattn_batch.load_model` module whose settings the workers rebuild
    (they load their own copy); else ``model_keywords`` are ``load_model``'s keywords.
    The scene keywords are ``reattn-batch run``'s options (README, "Mapping a scene").
    overwrite replaces an existing store; resume finishes one of the same run.

    Returns the run's :class:`~reattn_batch.run.summary.RunSummary` (store path, blocks
    computed and skipped, crops, MP/s, seconds by phase).
    """
    from reattn_batch.run.cluster import cluster_info
    from reattn_batch.run.request import SceneRequest, default_out
    from reattn_batch.run.spine import run_scene

    if overwrite and resume:
        raise InputError("pass overwrite=True (start again) or resume=True (finish), not both")
    if model is not None and model_keywords:
        raise InputError(
            f"`model` was given, so {', '.join(sorted(model_keywords))} cannot apply: pass "
            "them to load_model() instead"
        )
    spec = model.spec if model is not None else model_spec(**model_keywords)
    names = class_list(classes, background)
    require_background(names, spec.cfg.prob_thd, "pass background=True or prob_thd=0")
    settings = from_keywords(SceneSettings, {
        "gsd": gsd, "block_size": block_size, "bands": bands, "stretch": stretch,
        "variable": variable, "asset": asset, "save_confidence": save_confidence,
        "no_worker_timeout": no_worker_timeout,
    })  # fmt: skip
    cluster = from_keywords(ClusterSettings, {
        "scheduler": scheduler, "scheduler_file": scheduler_file, "workers": workers,
        "threads_per_worker": threads_per_worker,
    })  # fmt: skip
    if client is not None and cluster != ClusterSettings():
        raise InputError(
            "`client` was given, so scheduler, scheduler_file, workers and threads_per_worker "
            "cannot apply: pass one way to reach the cluster"
        )
    request = SceneRequest(
        scene=os.fspath(scene),
        model=spec,
        classes=names,
        out=Path(out) if out is not None else default_out(os.fspath(scene)),
        settings=settings,
        cluster=cluster,
        overwrite=overwrite,
        resume=resume,
    )
    connection = None if client is None else (client, cluster_info(client, torch_threads=0))
    return run_scene(request, connection)
