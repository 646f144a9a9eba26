"""SimFeatUp / FeatUp joint bilateral upsamplers (SPEC 2.6), pure PyTorch.

Both upsamplers take CLIP patch features ``source`` (B, C, h, w) (C = 512 after proj) and
the CLIP-normalised crop ``guidance`` (B, 3, 16h, 16w) and return (B, C, 16h, 16w) features
through four x2 learned joint-bilateral steps:

- ``jbu_one`` (SegEarth-OV's SimFeatUp): ONE step module ``up`` (radius 5, 11x11 = 121
  taps) applied four times;
- ``jbu_stack`` (FeatUp's original): four step modules ``up1..up4`` (radius 3, 49 taps).

Kernels are applied by :func:`adaptive_conv`: fused (each output pixel computed once
from its neighbourhood, by a kernel torch.compile generates) where that is switched on
and a compiler works, else tap by tap; either way memory stays at a few copies of the
(B, C, H, W) map, never a taps-times unfold of it. Taps are ordered row-major over the
(2r+1)x(2r+1) window (dy outer, dx inner), as ``torch.nn.Unfold`` yields them; the learned
fixup weights of released checkpoints depend on this order.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from reattn_batch.workers.checkpoint import load_tensors_only
from reattn_batch.workers.download import PinnedFile, fetch_pinned
from reattn_batch.workers.errors import UserError
from torch import Tensor, nn

log = logging.getLogger(__name__)

UPSAMPLER_KINDS = ("jbu_one", "jbu_stack", "bilinear")
# SegEarth-OV's released SimFeatUp weights, pinned: the URL names a commit, not a branch,
# and the bytes must match both digests. The git blob id is the file's object id in the
# tree of that commit (read from the repository itself, `git ls-tree`). The sha256 could
# not be computed on the machines this was written on (no route to GitHub); it is the
# value published for this file at this commit by a third-party project that verifies
# it in its setup script (vistarmodels, scripts/bootstrap_segearth_ov.sh, "5.69 MB").
# A download that matches neither is refused. Change all three together.
JBU_ONE = PinnedFile(
    url=(
        "https://raw.githubusercontent.com/likyoo/SegEarth-OV/"
        "3e22a969b32c6d751bdbba64a88a0b670e630f55/"
        "simfeatup_dev/weights/xclip_jbu_one_million_aid.ckpt"
    ),
    sha256="cabc594d0042535f3413ac89d5f0b8b3173aecf18e2e469fb91b015ea4de49d8",
    git_blob="d40f00838331331faa04a926ea5991f5203f91a8",
    max_bytes=64 << 20,
)
DOWNLOAD_TIMEOUT_S = 30.0


FUSED_CONV_ENV = "REATTN_BATCH_FUSED_CONV"  # auto | on | off
FUSED_CONV_MODES = ("auto", "on", "off")
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
    mode = os.environ.get(FUSED_CONV_ENV, "auto").strip().lower()
    if mode not in FUSED_CONV_MODES:
        raise UserError(f"${FUSED_CONV_ENV}={mode!r}: choose one of {', '.join(FUSED_CONV_MODES)}")
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
        _fused_state["failed"] = _one_line(e)
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


def _cubic_weights(t: float, a: float = -0.75) -> tuple[float, float, float, float]:
    """Keys' cubic convolution weights (a = -0.75, as torch's bicubic) of the four source
    samples at offsets -1, 0, 1, 2 from floor(x), for the fraction t = x - floor(x)."""

    def near(x: float) -> float:  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x: float) -> float:  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return far(t + 1), near(t), near(1 - t), far(2 - t)


@functools.lru_cache(maxsize=128)
def _bicubic_reflect_matrix(
    n_in: int, n_out: int, pad: int, device: torch.device, dtype: torch.dtype
) -> Tensor:
    """(n_out + 2 pad, n_in) on ``device`` in ``dtype`` (built in float64): row k is
    output sample reflect(k - pad) of a 1-D bicubic resize n_in -> n_out.

    Matches ``F.interpolate(mode="bicubic", align_corners=False)`` (source coordinate
    (o + 0.5) n_in / n_out - 0.5, neighbours clamped to the edge) followed by
    ``F.pad(mode="reflect")`` (index -k -> k, n_out - 1 + k -> n_out - 1 - k).
    """
    rows = torch.zeros(n_out, n_in, dtype=torch.float64)
    scale = n_in / n_out
    for o in range(n_out):
        x = scale * (o + 0.5) - 0.5
        x0 = math.floor(x)
        for k, weight in enumerate(_cubic_weights(x - x0)):
            rows[o, min(max(x0 - 1 + k, 0), n_in - 1)] += weight
    index = [abs(k - pad) for k in range(n_out + 2 * pad)]
    index = [i if i < n_out else 2 * (n_out - 1) - i for i in index]
    return rows[index].to(device, dtype)


def bicubic_reflect_padded(source: Tensor, size: tuple[int, int], pad: int) -> Tensor:
    """Bicubic resize to ``size`` then reflect padding by ``pad``, as two matrix products.

    source (B, C, h, w) -> (B, C, H + 2 pad, W + 2 pad). Equal to ``F.pad(F.interpolate(
    source, size, mode="bicubic", align_corners=False), [pad] * 4, mode="reflect")`` up to
    float rounding (tested), and about 2x faster on the CPU: the resize is separable, so
    it is (rows) @ source @ (cols)^T, with the padding folded into the matrices.
    """
    (h, w), (big_h, big_w) = source.shape[-2:], size
    rows = _bicubic_reflect_matrix(h, big_h, pad, source.device, source.dtype)
    cols = _bicubic_reflect_matrix(w, big_w, pad, source.device, source.dtype)
    return rows @ (source @ cols.T)


class JointBilateralStep(nn.Module):
    """One x2 learned-range joint bilateral upsampling step (FeatUp's ``JBULearnedRange``).

    forward(source (B, C, h, w), guidance (B, 3, H, W)) -> (B, C, H, W); H, W are usually
    2h, 2w. The kernel (B, D*D, H, W), D = 2r + 1, is a softmax range kernel on a learned
    32-d projection of the guidance times a Gaussian spatial kernel, normalised to sum 1,
    plus a learned fixup; it is applied to the bicubically upsampled, reflect-padded source
    (:func:`bicubic_reflect_padded`).
    """

    def __init__(self, radius: int = 3, guidance_dim: int = 3, key_dim: int = 32) -> None:
        super().__init__()
        self.radius = radius
        self.diameter = 2 * radius + 1
        taps = self.diameter**2
        self.range_temp = nn.Parameter(torch.tensor(0.0))
        self.sigma_spatial = nn.Parameter(torch.tensor(1.0))
        self.range_proj = nn.Sequential(
            nn.Conv2d(guidance_dim, key_dim, 1),
            nn.GELU(),
            nn.Dropout2d(0.1),
            nn.Conv2d(key_dim, key_dim, 1),
        )
        self.fixup_proj = nn.Sequential(
            nn.Conv2d(guidance_dim + taps, taps, 1),
            nn.GELU(),
            nn.Dropout2d(0.1),
            nn.Conv2d(taps, taps, 1),
        )

    def range_kernel(self, guidance: Tensor) -> Tensor:
        """Guidance (B, 3, H, W) -> range kernel (B, D*D, H, W), softmax over the taps."""
        r, d = self.radius, self.diameter
        proj = self.range_proj(guidance)  # (B, 32, H, W)
        h, w = proj.shape[-2:]
        padded = F.pad(proj, [r] * 4, mode="reflect")
        logits = torch.stack(
            [
                (padded[:, :, i : i + h, j : j + w] * proj).sum(1)
                for i in range(d)
                for j in range(d)
            ],
            dim=1,
        )  # (B, D*D, H, W), tap = i * D + j
        temp = self.range_temp.exp().clamp(1e-4, 1e4)
        return torch.softmax(temp * logits, dim=1)

    def spatial_kernel(self) -> Tensor:
        """Gaussian over the window on linspace(-1, 1, D): (1, D*D, 1, 1), row-major taps."""
        coords = torch.linspace(-1, 1, self.diameter, device=self.sigma_spatial.device)
        dist2 = (coords[:, None] ** 2 + coords[None, :] ** 2).reshape(1, -1, 1, 1)
        return torch.exp(-dist2 / (2 * self.sigma_spatial**2))

    def kernel(self, guidance: Tensor) -> Tensor:
        """Guidance (B, 3, H, W) -> combined kernel (B, D*D, H, W) (sums to ~1 over taps)."""
        combined = self.range_kernel(guidance) * self.spatial_kernel()
        combined = combined / combined.sum(1, keepdim=True).clamp(min=1e-7)
        return combined + 0.1 * self.fixup_proj(torch.cat([combined, guidance], dim=1))

    def forward(self, source: Tensor, guidance: Tensor) -> Tensor:
        """Source (B, C, h, w), guidance (B, 3, H, W) -> (B, C, H, W)."""
        b, _, h, w = guidance.shape
        d = self.diameter
        kernel = self.kernel(guidance).permute(0, 2, 3, 1).reshape(b, h, w, d, d)
        return adaptive_conv(bicubic_reflect_padded(source, (h, w), self.radius), kernel)


class _JBU(nn.Module):
    """Four x2 steps guided by the pooled crop, then out + 0.1 * Conv1x1(out)."""

    def __init__(self, feat_dim: int) -> None:
        super().__init__()
        self.feat_dim = feat_dim
        self.fixup_proj = nn.Sequential(nn.Dropout2d(0.2), nn.Conv2d(feat_dim, feat_dim, 1))

    def steps(self) -> list[JointBilateralStep]:
        raise NotImplementedError

    def upsample(self, source: Tensor, guidance: Tensor) -> Tensor:
        """The four x2 steps without the outer fixup; linear in ``source`` for a fixed guidance.

        Source (B, K, h, w) with any channel count K, guidance (B, 3, 16h, 16w)
        -> (B, K, 16h, 16w).
        """
        for step in self.steps():
            h, w = source.shape[-2:]
            source = step(source, F.adaptive_avg_pool2d(guidance, (2 * h, 2 * w)))
        return source

    def forward(self, source: Tensor, guidance: Tensor) -> Tensor:
        """Source (B, C, h, w), guidance (B, 3, 16h, 16w) -> (B, C, 16h, 16w)."""
        source = self.upsample(source, guidance)
        return torch.add(source, self.fixup_proj(source), alpha=0.1)  # out + 0.1 * fixup(out)


class JBUOne(_JBU):
    """SegEarth-OV's SimFeatUp: one radius-5 step module ``up`` applied 4 times.

    forward(source (B, C, h, w), guidance (B, 3, 16h, 16w)) -> (B, C, 16h, 16w).
    """

    def __init__(self, feat_dim: int = 512) -> None:
        super().__init__(feat_dim)
        self.up = JointBilateralStep(radius=5)

    def steps(self) -> list[JointBilateralStep]:
        return [self.up] * 4


class JBUStack(_JBU):
    """FeatUp's JBU stack: four radius-3 step modules ``up1..up4``.

    forward(source (B, C, h, w), guidance (B, 3, 16h, 16w)) -> (B, C, 16h, 16w).
    """

    def __init__(self, feat_dim: int = 512) -> None:
        super().__init__(feat_dim)
        self.up1, self.up2, self.up3, self.up4 = (JointBilateralStep(radius=3) for _ in range(4))

    def steps(self) -> list[JointBilateralStep]:
        return [self.up1, self.up2, self.up3, self.up4]


_CLASSES: dict[str, type[_JBU]] = {"jbu_one": JBUOne, "jbu_stack": JBUStack}


def _cache_root() -> Path:
    """$REATTN_BATCH_CACHE, else $XDG_CACHE_HOME/reattn-batch, else ~/.cache/reattn-batch."""
    if os.environ.get("REATTN_BATCH_CACHE"):
        return Path(os.environ["REATTN_BATCH_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "reattn-batch"


def default_weights_path(kind: str) -> Path:
    """Where the default weights of ``kind`` are cached (whether or not they are there yet)."""
    if kind == "jbu_stack":
        raise UserError(
            "--upsampler jbu_stack has no default weights; pass --upsampler-weights PATH "
            "(a FeatUp jbu_stack .ckpt), or use --upsampler jbu_one or --upsampler bilinear"
        )
    if kind != "jbu_one":
        raise UserError(f"--upsampler {kind!r} has no weights; choose one of {UPSAMPLER_KINDS}")
    return _cache_root() / "upsampler" / JBU_ONE.filename


def default_upsampler_weights(kind: str) -> Path:
    """Path of the default weights for ``kind``, checked against their pin.

    jbu_one's file is downloaded once into the cache from a pinned revision and checked
    against pinned digests (:data:`JBU_ONE`) there and on every later call; a damaged
    cached copy is fetched again with a warning. Offline: one line naming the fix.
    """
    dest = default_weights_path(kind)
    return fetch_pinned(
        JBU_ONE,
        dest,
        what="the default SimFeatUp weights",
        fix=(
            f"pass --upsampler-weights PATH (a local copy of {JBU_ONE.filename}) "
            "or --upsampler bilinear"
        ),
        timeout=DOWNLOAD_TIMEOUT_S,
    )


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:160]}" if text else type(e).__name__


def _detect_kind(keys: list[str]) -> str | None:
    """Which upsampler a set of (prefix-stripped) state-dict keys belongs to."""
    if any(k.startswith("up1.") for k in keys):
        return "jbu_stack"
    if any(k.startswith("up.") for k in keys):
        return "jbu_one"
    return None


def _read_upsampler_state(path: Path, label: str) -> dict[str, Tensor]:
    """The ``upsampler.*`` tensors of a Lightning checkpoint, prefix stripped."""
    fix = "pass a SimFeatUp/FeatUp .ckpt file, or --upsampler bilinear"
    if not path.is_file():
        raise UserError(f"{label} {path} does not exist; {fix}")
    try:
        ckpt = load_tensors_only(path)
    except Exception as e:  # torch.load raises many types on a corrupt or foreign file
        raise UserError(
            f"{label} {path} is not a readable checkpoint ({_one_line(e)}); {fix}"
        ) from e
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise UserError(f"{label} {path} holds no state dict; {fix}")
    prefix = "upsampler."
    ups = {
        k[len(prefix) :]: v for k, v in state.items() if isinstance(k, str) and k.startswith(prefix)
    }
    if not ups or not all(isinstance(v, Tensor) for v in ups.values()):
        raise UserError(f"{label} {path} holds no 'upsampler.*' tensors; {fix}")
    return ups


def load_upsampler(kind: str, weights: str | Path | None, feat_dim: int = 512) -> nn.Module | None:
    """Build the ``kind`` upsampler and load its weights strictly (eval mode, frozen).

    ``bilinear`` returns None (the caller interpolates logits). For ``jbu_one``/``jbu_stack``
    ``weights`` is a PyTorch-Lightning .ckpt whose ``state_dict`` keys start with
    ``upsampler.``; None means the default (:func:`default_upsampler_weights`). The module
    maps source (B, feat_dim, h, w), guidance (B, 3, 16h, 16w) -> (B, feat_dim, 16h, 16w).
    Any problem raises :class:`UserError` with one line.
    """
    if kind == "bilinear":
        if weights is not None:
            log.warning("--upsampler bilinear ignores --upsampler-weights %s", weights)
        return None
    if kind not in _CLASSES:
        raise UserError(f"unknown --upsampler {kind!r}; choose one of {', '.join(UPSAMPLER_KINDS)}")
    if weights is None:
        path, label = default_upsampler_weights(kind), "cached default upsampler weights"
    else:
        path, label = Path(weights).expanduser(), "--upsampler-weights"
    state = _read_upsampler_state(path, label)
    held = _detect_kind(list(state))
    if held is None:
        raise UserError(
            f"{label} {path} holds upsampler weights of no known kind (neither up.* for jbu_one "
            "nor up1..up4 for jbu_stack); pass a SimFeatUp/FeatUp .ckpt, or --upsampler bilinear"
        )
    if held != kind:
        what = {"jbu_one": "jbu_one weights (up)", "jbu_stack": "jbu_stack weights (up1..up4)"}
        raise UserError(
            f"{label} {path} holds {what[held]} but --upsampler {kind} was chosen; "
            f"pass --upsampler {held}"
        )
    module = _CLASSES[kind](feat_dim)
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or wrong:
        detail = "; ".join(
            f"{name}: {', '.join(items[:3])}{' ...' if len(items) > 3 else ''}"
            for name, items in (("missing", missing), ("unexpected", unexpected), ("shape", wrong))
            if items
        )
        raise UserError(
            f"{label} {path} does not match a {kind} upsampler with feat_dim {feat_dim} "
            f"({detail}); pass weights made for this CLIP backbone, or --upsampler bilinear"
        )
    module.load_state_dict(state, strict=True)
    module.eval().requires_grad_(False)
    return module
