"""`run`: one scene, any size, into one georeferenced label Zarr store (SPEC 3).

Plan (scene, grids, store) on the client; then one task per block on the cluster,
submitted through a bounded ``as_completed`` window so that a region of 100k blocks
does not flood the scheduler. Text embeddings are computed once, by one task, and
handed to every block task; the model itself never travels in the graph.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from contextlib import nullcontext
from importlib.metadata import version
from itertools import islice
from pathlib import Path

from distributed import Client, as_completed

from pipeline import store
from pipeline.block_task import JobSpec, run_block
from pipeline.cluster import ClusterInfo, ClusterRequest, connect
from pipeline.grids import BlockGrid, ModelGrid
from pipeline.memory import check_block_memory
from pipeline.progress import JobProgress
from pipeline.scene import SceneInfo, open_scene
from workers.classes import ClassList
from workers.errors import UserError
from workers.model_cache import embed_queries
from workers.model_spec import ModelSpec, describe_weights

log = logging.getLogger(__name__)

ZARR_CHUNK = 512


@dataclasses.dataclass(frozen=True)
class RunRequest:
    """Everything `reattn-batch run` was asked to do."""

    scene: str
    model: ModelSpec
    classes: ClassList
    out: Path
    gsd: float | None = None
    block_size: int = 2048
    bands: tuple[int, ...] | None = None
    stretch: tuple[float, float] | None = None
    variable: str | None = None
    cluster: ClusterRequest = ClusterRequest()
    save_confidence: bool = False
    overwrite: bool = False
    resume: bool = False


@dataclasses.dataclass(frozen=True)
class RunSummary:
    out: Path
    blocks: int
    computed: int
    skipped: int
    crops: int
    megapixels_per_second: float


def default_out(scene: str) -> Path:
    """<scene stem>.labels.zarr in the working directory."""
    name = scene.rstrip("/").rsplit("/", 1)[-1]
    stem = name.split("?", 1)[0]
    for suffix in (".zarr", ".tiff", ".tif", ".vrt", ".jp2"):
        stem = stem.removesuffix(suffix)
    return Path.cwd() / f"{stem or 'scene'}.labels.zarr"


def run_fingerprint(scene: SceneInfo, request: RunRequest, model_gsd: float, weights: dict) -> str:
    """Hash of everything that decides the labels: input, classes, method, every
    parameter, weight identities, grids (not the cluster)."""
    blob = {
        "scene": scene.identity,
        "bands": scene.bands,
        "stretch": scene.stretch,
        "variable": scene.variable,
        "classes": request.classes.as_dict(),
        "model": request.model.as_dict(),
        "weights": weights,
        "model_gsd": model_gsd,
        "block_size": request.block_size,
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]


def plan(request: RunRequest) -> tuple[SceneInfo, BlockGrid, float]:
    """Open the scene (metadata only) and lay out the grids."""
    if request.block_size <= 0 or request.block_size % ZARR_CHUNK:
        raise UserError(
            f"--block-size {request.block_size}: must be a positive multiple of {ZARR_CHUNK}"
        )
    if request.gsd is not None and request.gsd <= 0:
        raise UserError(
            f"--gsd {request.gsd}: must be a positive pixel size in the scene's CRS units"
        )
    scene = open_scene(
        request.scene, bands=request.bands, stretch=request.stretch, variable=request.variable
    )
    model_gsd = request.gsd or scene.gsd
    model_grid = ModelGrid.for_gsd((scene.height, scene.width), scene.gsd, model_gsd)
    cfg = request.model.cfg
    grid = BlockGrid(
        model_grid=model_grid, block=request.block_size, crop=cfg.crop, stride=cfg.stride
    )
    return scene, grid, model_gsd


def _block_result(future, grid: BlockGrid, out: str):
    """A finished block's result; a failed block fails the job with one line that names
    its window, leaving the store resumable (finished blocks keep their records)."""
    try:
        return future.result()
    except UserError as exc:
        raise UserError(f"{exc}; finished blocks are kept in {out}: rerun with --resume") from exc
    except Exception as exc:
        index = int(str(future.key).rsplit("-", 1)[-1])
        box = grid.block_at(index).native
        reason = str(exc).splitlines()[0] if str(exc) else ""
        raise UserError(
            f"block {index} (rows {box.y0}:{box.y1}, cols {box.x0}:{box.x1}) failed: "
            f"{type(exc).__name__}: {reason}; finished blocks are kept in {out}: "
            "fix the cause and rerun with --resume"
        ) from exc


def store_attrs(
    request: RunRequest,
    scene: SceneInfo,
    grid: BlockGrid,
    model_gsd: float,
    weights: dict,
    fingerprint: str,
) -> dict:
    """The store's group attributes: what was run, on what, with which weights."""
    attrs = {
        "software": "reattn-batch",
        "software_version": version("reattn-batch"),
        "run_fingerprint": fingerprint,
        "scene": scene.uri,
        "scene_identity": scene.identity,
        "bands": list(scene.bands),
        "variable": scene.variable,
        "stretch": list(scene.stretch) if scene.stretch else None,
        "native_gsd": scene.gsd,
        "model_gsd": model_gsd,
        "model_grid_shape": list(grid.model_grid.shape),
        "block_size": request.block_size,
        "classes": request.classes.as_dict(),
        "method": request.model.cfg.method,
        "hyperparameters": request.model.cfg.as_dict(),
        "upsampler": request.model.upsampler,
        "weights": weights,
        "random_weights": bool(weights["clip"].get("random")),
    }
    if attrs["random_weights"]:
        attrs["warning"] = "CLIP weights were RANDOM: these labels are for tests and mean nothing."
    return attrs


def _compute_blocks(client, info: ClusterInfo, job: JobSpec, todo: list[int], done: int, key: str):
    """Submit the blocks through a bounded window; returns (crops run, crops touched, MP/s)."""
    resources = {"GPU": 1} if info.gpu_resources else None
    model = job.model
    queries = client.submit(embed_queries, model, job.classes.queries, resources=resources)
    pending = iter(todo)

    def submit(index: int):
        return client.submit(
            run_block, job, index, queries, resources=resources, key=f"block-{key}-{index}"
        )

    window = max(2 * info.total_threads, 4)
    running = as_completed([submit(i) for i in islice(pending, window)])
    crops = touched = 0
    with JobProgress(len(job.grid), done_blocks=done) as progress:
        for future in running:
            result = _block_result(future, job.grid, job.store)
            crops += result.crops
            touched += result.crops_touching
            progress.advance(result.pixels)
            nxt = next(pending, None)
            if nxt is not None:
                running.add(submit(nxt))
        return crops, touched, progress.megapixels_per_second


def run_scene(
    request: RunRequest, connection: tuple[Client, ClusterInfo] | None = None
) -> RunSummary:
    """Map one scene. ``connection``: an open ``(client, info)`` from ``cluster.connect`` to
    reuse (regional jobs); by default the request's cluster is connected and closed here.

    Order: plan and weight identities (cheap, fail fast), then the cluster and the memory
    guard, and only then the store, so that bad input or an unreachable scheduler leave
    nothing behind.
    """
    scene, grid, model_gsd = plan(request)
    weights = describe_weights(request.model)
    fingerprint = run_fingerprint(scene, request, model_gsd, weights)
    out = str(Path(request.out).absolute())  # workers may run elsewhere
    connecting = connect(request.cluster) if connection is None else nullcontext(connection)
    with connecting as (client, info):
        log.info("Dask dashboard: %s", info.dashboard)
        need = check_block_memory(
            grid, len(request.classes.queries), request.model.cfg.batch_size,
            request.model.upsampler, info.worker_memory_limit,
        )  # fmt: skip
        log.info("block task memory estimate %.2f GiB", need.total / 2**30)
        done = store.prepare(
            out,
            store.StoreLayout(
                height=scene.height,
                width=scene.width,
                transform=scene.transform,
                crs_wkt=scene.crs_wkt,
                chunk=ZARR_CHUNK,
                with_confidence=request.save_confidence,
            ),
            attrs=store_attrs(request, scene, grid, model_gsd, weights, fingerprint),
            class_names=request.classes.names,
            blocks=grid.counts,
            overwrite=request.overwrite,
            resume=request.resume,
            background_index=request.classes.background_index,
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
            scene.uri, scene.width, scene.height, scene.gsd, grid.model_grid.shape[1],
            grid.model_grid.shape[0], model_gsd, len(grid), request.block_size, len(todo),
            len(grid.crops()), out,
        )  # fmt: skip
        job = JobSpec(
            scene=scene,
            model=request.model,
            classes=request.classes,
            grid=grid,
            store=out,
            save_confidence=request.save_confidence,
            torch_threads=info.torch_threads,
        )
        crops, touched, rate = _compute_blocks(client, info, job, todo, len(done), fingerprint)
    store.update_attrs(
        out,
        complete=True,
        blocks_computed_last_run=len(todo),
        blocks_done_before_last_run=len(done),
        blocks_recomputed_last_run=len(in_flight),  # in flight when the previous run stopped
        crops_run=crops,  # crops evaluated, halo duplicates included, all-nodata crops skipped
        crops_total=touched,  # crops the computed blocks touch
        megapixels_per_second=round(rate, 4),
    )
    return RunSummary(
        out=request.out,
        blocks=len(grid),
        computed=len(todo),
        skipped=len(done),
        crops=crops,
        megapixels_per_second=rate,
    )
