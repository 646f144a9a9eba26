"""`run`: one scene, any size, into one georeferenced label Zarr store (SPEC 3).

The spine, top-down, each step in its own module:

    plan      open the scene (metadata only) and lay out the grids     run/plan.py
    identify  weight identities and the run fingerprint                 run/fingerprint.py
    connect   an embedded LocalCluster or an existing scheduler         run/cluster.py
    guard     refuse a block size whose task would not fit a worker     run/guard.py
    store     create the store, or reopen it for --resume               store/resume.py
    submit    one task per block, a bounded window at a time            blocks/submit.py
    summary   mark the store complete, record the counters              run/summary.py

Plan and identify are cheap and fail fast; the store is created only once the cluster is
reachable and the guard has passed, so bad input or an unreachable scheduler leave
nothing behind.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from contextlib import nullcontext
from pathlib import Path

from distributed import Client

from reattn_batch import store
from reattn_batch.blocks.submit import submit_blocks
from reattn_batch.blocks.task import BlockTask
from reattn_batch.grid.grids import BlockGrid
from reattn_batch.run.cluster import ClusterInfo, connect
from reattn_batch.run.fingerprint import (
    RUN_KEYS,
    WORKER_KEYS,
    run_attrs,
    run_fingerprint,
    worker_precision,
)
from reattn_batch.run.guard import (
    Source,
    check_block_memory,
    feature_channels,
    fits_worker,
    guard_batch_size,
    model_bytes,
)
from reattn_batch.run.plan import Plan, block_grid, plan
from reattn_batch.run.request import SceneRequest
from reattn_batch.run.summary import RunSummary, finish
from reattn_batch.scene.uri import is_remote
from reattn_batch.settings import AUTO_BLOCK
from reattn_batch.store.create import looks_like_zarr
from reattn_batch.workers.model_spec import describe_weights

log = logging.getLogger(__name__)


def run_scene(
    request: SceneRequest, connection: tuple[Client, ClusterInfo] | None = None
) -> RunSummary:
    """Map one scene. ``connection``: an open ``(client, info)`` from ``connect`` to reuse
    (regional jobs); by default the request's cluster is connected and closed here."""
    layout = plan(request)
    scene, grid = layout.scene, layout.grid
    weights = describe_weights(request.model)
    fingerprint = run_fingerprint(request, layout, weights)
    out = str(Path(request.out).absolute())  # workers may run elsewhere
    if not is_remote(scene.path):
        store.check_not_input(out, [scene.path])  # --out on the input would destroy it
    connecting = connect(request.cluster) if connection is None else nullcontext(connection)
    with connecting as (client, info):
        log.info("Dask dashboard: %s", info.dashboard)
        memory = {
            "queries": len(request.classes.queries),
            "batch": guard_batch_size(
                request.model, len(request.classes.queries), info.gpu_resources
            ),
            "upsampler": request.model.upsampler,
            "worker_limit": info.worker_memory_limit,
            "workers": info.workers,
            "source": Source.of(scene),
            "model": model_bytes(request.model.cfg.clip_model),
            "channels": feature_channels(request.model.cfg),
        }
        layout = dataclasses.replace(layout, grid=_final_grid(request, layout, memory))
        grid = layout.grid
        need = check_block_memory(grid, **memory)
        log.info("block task memory estimate %.2f GiB", need.total / 2**30)
        done = store.prepare(
            out,
            store.StoreLayout(scene.geobox, with_confidence=request.settings.save_confidence),
            attrs=run_attrs(
                request, layout, weights, fingerprint, worker_precision(client, info, request.model)
            ),
            class_names=request.classes.names,
            blocks=grid.counts,
            overwrite=request.overwrite,
            resume=request.resume,
            background_index=request.classes.background_index,
            run_keys=RUN_KEYS,
            worker_keys=WORKER_KEYS,
        )
        todo = [i for i in range(len(grid)) if i not in done]
        in_flight = store.started_blocks(out) - done  # started by a run that stopped, unfinished
        if request.resume:
            log.info(
                "resuming %s: %d of %d blocks done; recomputing %d that were in flight when "
                "the last run stopped, computing %d never started",
                out, len(done), len(grid), len(in_flight), len(todo) - len(in_flight),
            )  # fmt: skip
        log.info(
            "scene %s: %dx%d px at %.3g -> model grid %dx%d at %.3g; %d blocks of %d px "
            "(%d to do), %d crops; out %s",
            scene.path, scene.width, scene.height, scene.gsd, grid.model_grid.shape[1],
            grid.model_grid.shape[0], layout.model_gsd, len(grid), grid.block, len(todo),
            grid.crop_count, out,
        )  # fmt: skip
        task = BlockTask(
            scene=scene,
            model=request.model,
            classes=request.classes,
            grid=grid,
            store=out,
            save_confidence=request.settings.save_confidence,
            torch_threads=info.torch_threads,
        )
        computed = submit_blocks(
            client, info, task, todo=todo, done=len(done), key=fingerprint,
            no_worker_timeout=request.settings.no_worker_timeout,
        )  # fmt: skip
    finish(
        out,
        todo=len(todo),
        done=len(done),
        in_flight=len(in_flight),
        computed=computed,
    )
    return RunSummary(
        out=request.out,
        blocks=len(grid),
        computed=len(todo),
        skipped=len(done),
        crops=computed.crops,
        megapixels_per_second=computed.megapixels_per_second,
        crops_in_scene=computed.crops_in_scene,
        seconds=computed.seconds,
        facts=computed.facts,
        block_size=grid.block,
    )


def _final_grid(request: SceneRequest, layout: Plan, memory: dict) -> BlockGrid:
    """The block grid this run uses: a resumed store's recorded block size (its completion
    records are per block; labels do not depend on it), else ``--block-size`` with
    ``auto`` resolved within the memory guard."""
    out = Path(request.out)
    if request.resume and looks_like_zarr(out):
        recorded = store.read_attrs(out).get("block_size")
        if isinstance(recorded, int) and recorded > 0:
            asked = request.settings.block_size
            if asked not in (recorded, AUTO_BLOCK):
                log.warning(
                    "--resume: using the store's block size %d px, not --block-size %s",
                    recorded, asked,
                )  # fmt: skip
            return dataclasses.replace(layout.grid, block=recorded)
    fits = functools.partial(fits_worker, **memory)
    return block_grid(
        layout.grid.model_grid, request.settings.block_size, request.model.cfg, fits=fits
    )
