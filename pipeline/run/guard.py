"""The memory guard (issue "resilient jobs", issue 11 item 5): refuse settings whose block
tasks would not fit a worker's memory, before anything is computed.

A block task holds, in float32 (4 bytes): the logit sum, the mean and, after resampling
to native, NATIVE_COPIES arrays (logits, scaled logits, softmax...), each Q x block pixels
(Q = text queries); plus one batch of crop logits (batch x Q x crop^2), the upsampled
features of a batch (batch x C x crop^2, SimFeatUp only, about three copies live
inside the upsampler; C = tokens per crop, 196 for 224 crops of 16 px patches, on the
rank-reduced path, 512 with ``upsampler_path: full``; ``batch`` as the workers resolve
``batch_size: auto``: :func:`guard_batch_size`), the image window, the source tiles a
read decodes (the source's internal tile size: a scene stored as one strip of every row
decodes the whole strip),
and the model (weights and the activations of a batch; shared by a worker's threads).

Per worker: the model once + threads x one block task, against its memory limit (a
worker without a limit is not checked, and does not switch the check off for the
others). On GPU workers the accumulators, a batch and the model live on the device: they
are also checked against the GPU's memory. tests/test_memory_guard.py compares the
estimate with the measured peak RSS of a real block task.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
from odc.geo.geobox import GeoboxTiles

from reattn_batch.grid.grids import BlockGrid
from reattn_batch.store.layout import CHUNK
from reattn_batch.workers.errors import InputError, UserError

FLOAT = 4
MODEL_BYTES = 1.2e9  # ViT-B/16 fp32 weights, activations of a batch, text tower
#: The runtime a worker's first block task brings up besides the model: torch's kernels,
#: thread pools and allocator caches, GDAL's block cache, zarr/numcodecs buffers. Measured:
#: peak RSS of one tiny-model block task in a fresh process minus the estimate of its
#: parts, about 150 MB for 512..2048 px blocks (tests/test_memory_guard.py), rounded up.
RUNTIME_BYTES = 200_000_000
HEADROOM = 0.8
#: Q x native-pixel float32 arrays alive at once after resampling back to native (the mean,
#: scaled logits, softmax, a temporary): 2 let a 201-query task past the guard that then
#: died at a 1.5 GiB limit (tests/test_memory_guard.py::test_run_refuses_before...).
NATIVE_COPIES = 4  # use at most this share of a worker's (or a GPU's) memory
FEAT_DIM = 512  # CLIP ViT-B/16 feature channels (the full upsampler path)
PATCH = 16


def feature_channels(cfg) -> int:
    """Channels the upsampler carries: tokens per crop on the rank-reduced path, else 512."""
    if cfg.upsampler_path == "rank_reduced":
        return min(FEAT_DIM, (cfg.crop // PATCH) ** 2)
    return FEAT_DIM


def guard_batch_size(spec, queries: int, gpu_workers: bool) -> int:
    """The crop batch a block task will run: ``cfg.batch_size``, or ``auto`` resolved by
    workers.batching for the workers' device (CPU 1; on CUDA the size this machine's GPU
    gives, or the cap where the client has no GPU: an upper bound)."""
    import torch

    from reattn_batch.workers.batching import CUDA_BATCH_CAP, resolve_batch_size
    from reattn_batch.workers.segmenter import resolve_device

    cfg = spec.cfg
    device = resolve_device(spec.device) if not gpu_workers else torch.device("cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        return cfg.batch_size or CUDA_BATCH_CAP
    return resolve_batch_size(device, cfg, queries, spec.upsampler != "bilinear")


@dataclasses.dataclass(frozen=True)
class BlockMemory:
    """Estimated peak bytes of one block task, by part."""

    logits: int
    crops: int
    image: int
    model: int
    source: int = 0  # decoded source tiles of the block's read beyond the window itself
    runtime: int = RUNTIME_BYTES  # once per worker process (see RUNTIME_BYTES)

    @property
    def per_thread(self) -> int:
        """What each concurrent block task of a worker adds (all but the shared model)."""
        return self.logits + self.crops + self.image + self.source

    @property
    def total(self) -> int:
        return self.per_thread + self.model + self.runtime

    @property
    def device(self) -> int:
        """What a task puts on a GPU: accumulators, a batch, the model."""
        return self.logits // 2 + self.crops + self.model

    def worker(self, threads: int) -> int:
        """Peak bytes of a worker running ``threads`` block tasks at once."""
        return self.runtime + self.model + max(1, threads) * self.per_thread


@dataclasses.dataclass(frozen=True)
class Source:
    """The source's internal tiling as a read sees it: ``tiles``, the scene's GeoBox cut
    into its internal tiles (SceneInfo.tile, (rows, cols); None: unknown), the bands a tile
    holds (SceneInfo.tile_bands) and bytes per sample."""

    tiles: GeoboxTiles | None
    tile_bands: int
    itemsize: int

    @classmethod
    def of(cls, scene) -> Source:
        tiles = GeoboxTiles(scene.geobox, scene.tile) if scene.tile is not None else None
        return cls(tiles, scene.tile_bands, np.dtype(scene.dtype).itemsize)


def source_bytes(source: Source | None, read: tuple[int, int]) -> int:
    """Bytes of the source tiles decoded for a ``read`` (rows, cols) window beyond the
    window itself: whole tiles, one more per axis for an unaligned window."""
    if source is None or source.tiles is None:
        return 0
    (height, width), (th, tw) = source.tiles.base.shape, source.tiles.chunk_shape((0, 0))
    rh, rw = read
    rows = min(height, (math.ceil(rh / th) + 1) * th)
    cols = min(width, (math.ceil(rw / tw) + 1) * tw)
    decoded = rows * cols * source.tile_bands * source.itemsize
    return max(0, decoded - rh * rw * source.tile_bands * source.itemsize)


def estimate_block_memory(
    grid: BlockGrid,
    *,
    queries: int,
    batch: int,
    upsampler: str,
    source: Source | None = None,
    model_bytes: float = MODEL_BYTES,
    channels: int = FEAT_DIM,
) -> BlockMemory:
    """Peak bytes of the largest (first, full) block task of ``grid`` (``batch`` 0, i.e.
    auto, counts as at least one crop)."""
    batch = max(1, batch)
    block = grid.block_at(0)
    model_px = block.model.shape[0] * block.model.shape[1]
    native_px = block.native.shape[0] * block.native.shape[1]
    crop_px = grid.crop * grid.crop
    crop_box_px = block.crop_box.shape[0] * block.crop_box.shape[1]
    read_px = block.read.shape[0] * block.read.shape[1]
    # model region: the logit sum and the mean; native: the resampled mean, the scaled
    # logits, their softmax and its temporaries in class_probabilities (4 copies)
    logits = FLOAT * queries * (2 * model_px + NATIVE_COPIES * native_px)
    features = 3 * batch * channels * crop_px * FLOAT if upsampler != "bilinear" else 0
    crops = FLOAT * batch * queries * crop_px + features
    image = read_px * (3 + 1 + 3 * FLOAT) + crop_box_px * (1 + 2 * 3 * FLOAT)
    return BlockMemory(
        logits=logits,
        crops=crops,
        image=image,
        model=int(model_bytes),
        source=source_bytes(source, block.read.shape),
    )


def model_bytes(clip_model: str) -> int:
    """fp32 weights of the open_clip architecture ``clip_model`` plus as much again for
    activations and the text tower's work (ViT-B/16: about MODEL_BYTES); MODEL_BYTES when
    the architecture's config is unknown."""
    try:
        import open_clip

        import reattn_batch.workers.backbone  # noqa: F401  (registers our configs, e.g. ViT-T-16-test)

        cfg = open_clip.get_model_config(clip_model)
    except Exception:
        cfg = None
    if not cfg:
        return int(MODEL_BYTES)
    vision, text = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
    v_width, t_width = int(vision.get("width", 768)), int(text.get("width", 512))
    patches = (int(vision.get("image_size", 224)) // int(vision.get("patch_size", 16))) ** 2
    params = (
        12 * int(vision.get("layers", 12)) * v_width**2
        + 12 * int(text.get("layers", 12)) * t_width**2
        + int(text.get("vocab_size", 49408)) * t_width
        + (patches + 1) * v_width
        + 3 * int(vision.get("patch_size", 16)) ** 2 * v_width
    )
    return 2 * FLOAT * params


@dataclasses.dataclass(frozen=True)
class Worker:
    """What the guard checks of a worker (run/cluster.py WorkerInfo has these fields)."""

    threads: int = 1
    memory_limit: int | None = None
    gpu_memory: int | None = None


def fits_worker(grid: BlockGrid, **memory) -> bool:
    """Whether block tasks of ``grid`` fit the workers (the arguments of
    :func:`check_block_memory`); used by ``--block-size auto``."""
    try:
        check_block_memory(grid, **memory)
    except UserError:
        return False
    return True


def check_block_memory(
    grid: BlockGrid,
    *,
    queries: int,
    batch: int,
    upsampler: str,
    worker_limit: int | None = None,
    workers: Sequence = (),
    source: Source | None = None,
    model: float = MODEL_BYTES,
    channels: int = FEAT_DIM,
) -> BlockMemory:
    """Raise a UserError with a fitting --block-size when the block tasks would not fit a
    worker: each of ``workers`` (threads, memory_limit, gpu_memory), or with none given,
    one single-thread worker of ``worker_limit`` bytes. Returns one task's estimate."""
    shape = {"queries": queries, "batch": batch, "upsampler": upsampler, "source": source}
    shape["model_bytes"] = model
    shape["channels"] = channels
    need = estimate_block_memory(grid, **shape)
    checked = list(workers) or [Worker(1, worker_limit)]
    for worker in checked:
        threads = max(1, int(worker.threads))
        if worker.memory_limit and need.worker(threads) > HEADROOM * worker.memory_limit:
            raise _refusal(grid, shape, need.worker(threads), worker.memory_limit, threads, "")
        gpu = getattr(worker, "gpu_memory", None)
        if gpu and need.device > HEADROOM * gpu:
            raise _refusal(grid, shape, need.device, gpu, 1, "GPU ")
    return need


def _refusal(grid, shape, need: int, limit: int, threads: int, kind: str) -> UserError:
    """The refusal line, with the largest block size that fits when one does."""

    def fits(size: int) -> bool:
        smaller = estimate_block_memory(dataclasses.replace(grid, block=size), **shape)
        return (smaller.device if kind else smaller.worker(threads)) <= HEADROOM * limit

    suggestion = next((s for s in range(grid.block - CHUNK, 0, -CHUNK) if fits(s)), None)
    fix = (
        f"pass block_size={suggestion}"
        if suggestion
        else "use fewer classes or synonyms, a smaller batch_size, fewer threads per worker, "
        "or workers with more memory"
    )
    tasks = f"{threads} threads x " if threads > 1 else ""
    return InputError(
        f"a {grid.block} px block with {shape['queries']} text queries ({tasks}one block task) "
        f"needs about {need / 2**30:.1f} GiB but a worker has {limit / 2**30:.1f} GiB of "
        f"{kind}memory: {fix}"
    )
