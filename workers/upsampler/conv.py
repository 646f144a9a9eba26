"""The per-pixel adaptive convolution of a joint bilateral step: fused (one compiled
kernel, state kept per process) where that is switched on and a compiler works, else
tap by tap. Taps are ordered row-major over the (2r+1)x(2r+1) window (dy outer, dx inner),
as ``torch.nn.Unfold`` yields them; the learned fixup weights of released checkpoints
depend on this order."""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from reattn_batch.workers.describe import one_line
from reattn_batch.workers.environment import EnvironmentSettings

log = logging.getLogger(__name__)

FUSED_CONV_ENV = EnvironmentSettings.variable("fused_conv")  # auto | on | off
_fused_state: dict[str, object] = {}  # "fn": the compiled tap sum, "failed": the reason


def tap_sum(source_padded: Tensor, kernel: Tensor) -> Tensor:
    """The adaptive convolution as ONE expression over the taps (the fused form).

    Eager, this materialises every tap; compiled, inductor turns it into one loop that
    reads each output pixel's (2r+1)^2 neighbours and writes the pixel once.
    Shapes as :func:`adaptive_conv`.
    """
    _, _, h, w, d, _ = (*source_padded.shape[:2], *kernel.shape[1:])
    out = None
    for i in range(d):
        for j in range(d):
            term = source_padded[:, :, i : i + h, j : j + w] * kernel[:, None, :, :, i, j]
            out = term if out is None else out + term
    return out


def fused_conv_wanted(device: torch.device) -> bool:
    """Whether :func:`adaptive_conv` tries the compiled kernel on ``device``.

    ``$REATTN_BATCH_FUSED_CONV``: ``on``, ``off``, or ``auto`` (default): on for CUDA,
    off on the CPU, where compiling costs 30 s to minutes per new shape on a small
    machine (measured 34-312 s on 2 cores), more than it saves on one image.
    """
    mode = EnvironmentSettings.from_env("fused_conv").fused_conv
    if mode == "auto":
        return device.type == "cuda"
    return mode == "on"


def _fused_conv(source_padded: Tensor, kernel: Tensor) -> Tensor | None:
    """The compiled :func:`tap_sum`, or None (logged once) where compiling fails."""
    if "failed" in _fused_state:
        return None
    try:
        if "fn" not in _fused_state:
            _fused_state["fn"] = torch.compile(tap_sum, dynamic=False)
        return _fused_state["fn"](source_padded, kernel)  # type: ignore[operator]
    except Exception as e:  # no compiler, unsupported backend, ...: fall back for good
        _fused_state["failed"] = one_line(e)
        log.warning(
            "fused adaptive convolution unavailable (%s); using the tap-by-tap loop",
            _fused_state["failed"],
        )
        return None


def adaptive_conv(source_padded: Tensor, kernel: Tensor) -> Tensor:
    """Per-pixel convolution with a per-pixel kernel.

    Args:
        source_padded: (B, C, H + 2r, W + 2r) source, already padded by r.
        kernel: (B, H, W, D, D), D = 2r + 1.

    Returns:
        (B, C, H, W) with out[b, c, h, w] = sum_{i, j} kernel[b, h, w, i, j] *
        source_padded[b, c, h + i, w + j]: fused where :func:`fused_conv_wanted` and a
        compiler works, else accumulated one tap at a time (:func:`tap_loop`).
    """
    b, c, hp, wp = source_padded.shape
    kb, h, w, d, d2 = kernel.shape
    if d != d2 or kb != b or hp != h + d - 1 or wp != w + d - 1:
        raise ValueError(
            f"adaptive_conv: source {tuple(source_padded.shape)} "
            f"does not fit kernel {tuple(kernel.shape)}"
        )
    kernel = kernel.to(source_padded.dtype)
    if fused_conv_wanted(source_padded.device):
        out = _fused_conv(source_padded, kernel)
        if out is not None:
            return out
    return tap_loop(source_padded, kernel)


# On CPU, :func:`tap_loop` accumulates this many channels at a time: the accumulator stays
# near the cores (measured fastest of 2..196 at 112 and 224 px on 196 channels); on a GPU
# one pass over all channels keeps the kernel launches at D*D.
CPU_CHANNEL_CHUNK = 32


def tap_loop(source_padded: Tensor, kernel: Tensor) -> Tensor:
    """:func:`adaptive_conv` one whole-map pass per tap (the eager fallback; no checks)."""
    b, c, _, _ = source_padded.shape
    _, h, w, d, _ = kernel.shape
    taps = kernel.to(source_padded.dtype).permute(0, 3, 4, 1, 2).unsqueeze(3).contiguous()
    out = source_padded.new_empty(b, c, h, w)
    chunk = CPU_CHANNEL_CHUNK if source_padded.device.type == "cpu" else c
    for c0 in range(0, c, chunk):
        acc, src = out[:, c0 : c0 + chunk], source_padded[:, c0 : c0 + chunk]
        torch.mul(src[:, :, :h, :w], taps[:, 0, 0], out=acc)  # the first tap sets acc
        for i in range(d):
            for j in range(d):
                if i or j:
                    acc.addcmul_(src[:, :, i : i + h, j : j + w], taps[:, i, j])
    return out
