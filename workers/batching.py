"""How many crops go into one forward pass: the one place that decides it (SPEC 2.7).

``batch_size: auto`` (the default) resolves per device:

- CPU: 1. Batching gains nothing on a CPU (the work per crop is the same and larger
  batches fall out of cache), and batch 1 pads no crop.
- CUDA: the largest power of two, capped at :data:`CUDA_BATCH_CAP`, whose estimated
  activations (:func:`crop_bytes`) fit in :data:`CUDA_MEMORY_SHARE` of the device's
  memory left after the weights. The budget is the device's *total* memory less what
  this process has allocated, not the momentary free memory: the batch shape must be
  the same on every worker with the same GPU model, because crops run in fixed-shape
  batches and GPU kernels may round differently for other shapes; that is what keeps
  labels bitwise identical across block sizes and workers.

A crop's logits never depend on its position in a batch: batches have a fixed shape
(the last one padded with zero crops, reattn_batch.workers.sliding).
"""

from __future__ import annotations

import logging
import math

import torch

from reattn_batch.workers.config import AUTO_BATCH, MethodConfig

log = logging.getLogger(__name__)

CPU_BATCH = 1
CUDA_BATCH_CAP = 64
CUDA_MEMORY_SHARE = 0.6  # of the memory left after the weights; the rest is slack
FP32_BYTES = 4


def crop_bytes(
    cfg: MethodConfig,
    queries: int,
    upsampler: bool,
    width: int = 768,
    heads: int = 12,
    feat_dim: int = 512,
    patch: int = 16,
) -> int:
    """Estimated peak activation bytes of one crop in ``crop_logits`` (fp32, generous).

    Encoder: per trunk pass (4 for ReAttnCLIP's rotations, else 1) the residual stream,
    q/k/v and the 4x MLP hidden (about 12 T x width), the attention scores of all heads
    (3 maps, fp32) and the kept streams and maps. Upsampler: the feature map at crop
    size (N channels on the rank-reduced path, else feat_dim) about 4 times, and the
    per-pixel kernels of the widest step (121 taps) 3 times. Logits: Q x crop^2 3 times.
    """
    tokens = (cfg.crop // patch) ** 2 + 1
    passes = len(cfg.rotations) if cfg.method == "reattnclip" else 1
    trunk = passes * (12 * tokens * width + 3 * heads * tokens * tokens)
    kept = len(set(cfg.xx_layers)) * passes * tokens * width + 8 * tokens * tokens
    pixels = cfg.crop * cfg.crop
    channels = tokens - 1 if cfg.upsampler_path == "rank_reduced" else feat_dim
    ups = (4 * min(channels, feat_dim) + 3 * 121) * pixels if upsampler else 0
    logits = 3 * queries * pixels
    return FP32_BYTES * (trunk + kept + ups + logits)


def cuda_batch_size(budget_bytes: int, per_crop_bytes: int, cap: int = CUDA_BATCH_CAP) -> int:
    """The largest power of two <= cap whose crops fit in ``budget_bytes`` (at least 1)."""
    if per_crop_bytes <= 0 or budget_bytes < per_crop_bytes:
        return 1
    fits = min(cap, budget_bytes // per_crop_bytes)
    return 2 ** int(math.log2(fits))


def default_batch_size(
    device: torch.device, cfg: MethodConfig, queries: int, upsampler: bool, **model: int
) -> int:
    """The crop batch for ``batch_size: auto`` on ``device`` (module docstring).

    ``model``: width, heads, feat_dim, patch of the backbone, for :func:`crop_bytes`.
    """
    if device.type != "cuda":
        return CPU_BATCH
    total = torch.cuda.get_device_properties(device).total_memory
    budget = int(CUDA_MEMORY_SHARE * (total - torch.cuda.memory_allocated(device)))
    per_crop = crop_bytes(cfg, queries, upsampler, **model)
    batch = cuda_batch_size(budget, per_crop)
    log.info(
        "batch_size auto on %s: %d crops (about %.0f MiB a crop, budget %.0f MiB)",
        torch.cuda.get_device_name(device), batch, per_crop / 2**20, budget / 2**20,
    )  # fmt: skip
    return batch


def resolve_batch_size(
    device: torch.device, cfg: MethodConfig, queries: int, upsampler: bool, **model: int
) -> int:
    """``cfg.batch_size`` where it is a number, else :func:`default_batch_size`."""
    if cfg.batch_size != AUTO_BATCH:
        return cfg.batch_size
    return default_batch_size(device, cfg, queries, upsampler, **model)
