"""ReAttnCLIP's A_refine, the math (SPEC 2.3); the method modules that use it are in
:mod:`reattn_batch.workers.methods`.

Shapes: B crops, H heads, T = 1 + N tokens ([CLS] first), N patches. Attention maps are fp32.

A_refine = [[ Ā(0,0), Ā(0,1:N) ], [ 0, S ]], S = alpha * S_rot + sum_l beta_l P(l).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor


@dataclasses.dataclass
class ReAttnParts:
    """The pieces of A_refine that do not come from the base.

    patch_patch: S (B, N, N) shared by all heads, or None (keep the base's block).
    cls_row: Ā(0,:) (B, T), or None (keep the base's row 0).
    zero_cls_col: whether A(i, 0) = 0 for every patch i.
    """

    patch_patch: Tensor | None
    cls_row: Tensor | None
    zero_cls_col: bool

    @property
    def is_identity(self) -> bool:
        """True when A_refine is the base's A, unchanged."""
        return self.patch_patch is None and self.cls_row is None and not self.zero_cls_col

    @property
    def replaces_all(self) -> bool:
        """True when no entry of the base's A survives (the default ReAttnCLIP)."""
        return self.patch_patch is not None and self.cls_row is not None and self.zero_cls_col


def xx_similarity(tokens: Tensor, scale: float) -> Tensor:
    """softmax(X X^T * scale) over patches: X (B, N, C) -> (B, N, N), fp32."""
    x = tokens.float()
    return torch.softmax((x @ x.transpose(-1, -2)) * scale, dim=-1)


def rotated_similarity(
    xs: dict[tuple[int, int], Tensor], weights: dict[int, float], scale: float
) -> Tensor:
    """S_rot = (1/|K|) sum_{k, r} lambda_r softmax(X(r,k) X(r,k)^T scale).

    xs: {(degrees, k): (B, N, C)} normalised patch tokens, already in ground order (U_r).
    weights: {degrees: lambda_r}. Returns (B, N, N) fp32.
    """
    layers = {k for _, k in xs}
    total = None
    for (degrees, _), x in sorted(xs.items(), key=lambda item: (item[0][1], item[0][0])):
        term = weights[degrees] * xx_similarity(x, scale)
        total = term if total is None else total + term
    return total / len(layers)


def fused_patch_attention(
    s_rot: Tensor, maps: dict[int, Tensor], alpha: float, betas: dict[int, float]
) -> Tensor:
    """S = alpha * S_rot + sum_l beta_l * P(l); P(l) = maps[l][:, 1:, 1:].

    s_rot: (B, N, N); maps: {l: (B, T, T)} head-averaged q.k attention. -> (B, N, N).
    """
    s = alpha * s_rot
    for layer in sorted(maps):
        s = s + betas[layer] * maps[layer][:, 1:, 1:]
    return s


def mean_cls_row(maps: dict[int, Tensor]) -> Tensor:
    """Ā(0,:) = mean over l of the [CLS] rows: {l: (B, T, T)} -> (B, T)."""
    rows = [maps[layer][:, 0, :] for layer in sorted(maps)]
    return torch.stack(rows).mean(dim=0)


def refine_attention(base: Tensor | None, parts: ReAttnParts, num_tokens: int) -> Tensor | None:
    """A_refine (B, H or 1, T, T) from the base's A (None = identity) and the parts.

    Returns ``base`` itself when no part replaces anything, so that reattnclip with
    every switch on ``base`` is its base exactly.
    """
    if parts.is_identity:
        return base
    ref = parts.patch_patch if parts.patch_patch is not None else parts.cls_row
    batch = ref.shape[0] if ref is not None else base.shape[0]
    device = ref.device if ref is not None else base.device
    if base is None and not parts.replaces_all:  # maskclip's identity, same for every head
        base = torch.eye(num_tokens, device=device).expand(batch, 1, -1, -1)
    heads = 1 if parts.replaces_all else base.shape[1]
    a = torch.empty(batch, heads, num_tokens, num_tokens, device=device)
    a[:, :, 0, :] = base[:, :, 0, :] if parts.cls_row is None else parts.cls_row[:, None, :]
    a[:, :, 1:, 0] = 0.0 if parts.zero_cls_col else base[:, :, 1:, 0]
    if parts.patch_patch is None:
        a[:, :, 1:, 1:] = base[:, :, 1:, 1:]
    else:
        a[:, :, 1:, 1:] = parts.patch_patch[:, None, :, :]
    return a
