"""Cosine logits of SimFeatUp-upsampled features with the text queries (SPEC 2.4, 2.6).

Two exact paths to the same numbers (config key ``upsampler_path``):

``full``: upsample the C = 512 channels of the patch features, normalise each pixel's
feature, dot it with every unit query. The reference.

``rank_reduced`` (default): the same logits from the four JBU steps run on N channels,
N = h*w patch tokens of the crop (196 for a 224 crop), instead of C.

Derivation. Fix one crop and its guidance. Each JBU step is bicubic upsampling, reflect
padding and a per-pixel weighted sum over a window whose weights depend only on the
guidance: linear in its source, applied to every channel alike. So the four steps are
one linear map L (P x N: P = H*W output pixels, N source tokens) applied per channel,
``upsample(F) = L F`` with F (N x C) the patch features. The outer fixup is affine,
out = s + 0.1 (W s + b), so the upsampled features are

    U = L F (I + 0.1 W)^T + 1 c^T = L A + 1 c^T,   A = F (I + 0.1 W)^T (N x C),  c = 0.1 b.

A has rank <= N. With the thin QR A^T = Q R (Q: C x N orthonormal columns, R: N x N),
A = R^T Q^T and L A = (L R^T) Q^T = G Q^T, where G = L R^T (P x N) is the four steps
run on the N "channels" of R^T (channel k of token n holds R[k, n]). Per pixel p, with
g = G[p] (N) and a unit query t (C):

    u . t = g . (Q^T t) + c . t
    |u|^2 = |Q g|^2 + 2 (Q g) . c + |c|^2 = |g|^2 + 2 g . (Q^T c) + |c|^2   (Q^T Q = I)

and the logit is (u . t) / |u|. Only rounding differs from the full path (tests: within
1e-6). When N >= C the basis would have C channels, so the full path runs instead.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from reattn_batch.workers.config import UPSAMPLER_PATHS


def outer_fixup(upsampler: nn.Module) -> tuple[Tensor, Tensor]:
    """(I + 0.1 W) (C, C) and c = 0.1 b (C) of the upsampler's outer Conv1x1 fixup, fp32."""
    conv = upsampler.fixup_proj[1]
    weight = conv.weight[:, :, 0, 0].float()
    eye = torch.eye(weight.shape[0], device=weight.device, dtype=weight.dtype)
    bias = conv.bias.float() if conv.bias is not None else weight.new_zeros(weight.shape[0])
    return eye + 0.1 * weight, 0.1 * bias


def full_cosines(upsampler: nn.Module, source: Tensor, guidance: Tensor, queries: Tensor) -> Tensor:
    """The reference: cos(upsampler(source), t) per pixel and query.

    source (B, C, h, w), guidance (B, 3, 16h, 16w), queries (Q, C) unit -> (B, Q, 16h, 16w) fp32.
    """
    feats = upsampler(source, guidance).float()
    feats = feats / feats.norm(dim=1, keepdim=True)
    return torch.einsum("bdhw,qd->bqhw", feats, queries)


def reduced_cosines(
    upsampler: nn.Module, source: Tensor, guidance: Tensor, queries: Tensor
) -> Tensor:
    """The same cosines through the N-channel basis (module docstring); N < C required.

    source (B, C, h, w), guidance (B, 3, 16h, 16w), queries (Q, C) unit -> (B, Q, 16h, 16w) fp32.
    """
    b, c, h, w = source.shape
    n = h * w
    if n >= c:
        raise ValueError(f"reduced_cosines needs fewer tokens ({n}) than channels ({c})")
    with torch.autocast(source.device.type, enabled=False):  # QR in fp32
        mix, shift = outer_fixup(upsampler)  # (C, C), (C,)
        feats = source.float().flatten(2).transpose(1, 2)  # F: (B, N, C)
        a = feats @ mix.T  # A: (B, N, C)
        q, r = torch.linalg.qr(a.transpose(1, 2))  # Q (B, C, N), R (B, N, N)
        basis = r.reshape(b, n, h, w)  # channel k of token n = R[k, n]
    g = upsampler.upsample(basis.to(source.dtype), guidance).float()  # G: (B, N, H, W)
    qt = torch.einsum("bck,qc->bkq", q, queries)  # Q^T t: (B, N, Q)
    qc = torch.einsum("bck,c->bk", q, shift)  # Q^T c: (B, N)
    dots = torch.einsum("bkhw,bkq->bqhw", g, qt) + (queries @ shift)[None, :, None, None]
    sq = g.square().sum(1) + 2 * torch.einsum("bkhw,bk->bhw", g, qc) + shift.square().sum()
    return dots / sq.clamp_min(0).sqrt()[:, None]


def upsampled_cosines(
    upsampler: nn.Module, source: Tensor, guidance: Tensor, queries: Tensor, path: str
) -> Tensor:
    """cos(SimFeatUp(source), t_q) per pixel: (B, C, h, w), (B, 3, 16h, 16w), (Q, C)
    -> (B, Q, 16h, 16w) fp32, by ``path`` (``rank_reduced`` falls back to ``full`` when a
    crop has as many tokens as channels, where the basis would save nothing)."""
    if path not in UPSAMPLER_PATHS:
        raise ValueError(f"unknown upsampler path {path!r}; choose one of {UPSAMPLER_PATHS}")
    b, c, h, w = source.shape
    if path == "rank_reduced" and h * w < c:
        return reduced_cosines(upsampler, source, guidance, queries)
    return full_cosines(upsampler, source, guidance, queries)
