"""The methods: one ``torch.nn.Module`` class each, and the registry that names them
(SPEC 2.2, 2.3).

Every method changes block 12 of a CLIP ViT only. A method module holds no weights: it is
called with the CLIP vision tower and runs it, ``method(visual, images) -> DenseFeatures``,
so the same method plugs into any open_clip-style ViT (``visual.transformer.resblocks``,
``ln_post``, ``proj``). Shapes: B crops, H heads, T = 1 + N tokens ([CLS] first),
N = h * w patches, C = width, D = output dim, hd = head dim. Attention maps are fp32.

| method      | A per head                                  | residual/FFN |
|-------------|---------------------------------------------|--------------|
| vanilla     | softmax(q k^T s)                            | kept         |
| maskclip    | identity                                    | dropped      |
| sclip       | softmax(q q^T s) + softmax(k k^T s)         | kept         |
| clearclip   | softmax(q q^T s)                            | dropped      |
| segearth-ov | softmax(qq) + softmax(kk) + softmax(vv)     | dropped      |
| reattnclip  | A_refine on a base (above)                  | as the base  |

:data:`METHODS` is the one list of method names: the CLI's choices, the config schema,
the FLOP model and the README's table all read it. Adding a method is a subclass of
:class:`Method` (or :class:`BaseMethod`) here and one registry entry.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor, nn

from reattn_batch.workers.attention import (
    ReAttnParts,
    fused_patch_attention,
    mean_cls_row,
    refine_attention,
    rotated_similarity,
)
from reattn_batch.workers.rotation import rotate, to_ground_order
from reattn_batch.workers.vit import TrunkOutput, merge_heads, qkv, run_trunk, softmax_attention


@dataclasses.dataclass
class DenseFeatures:
    """patches: (B, D, h, w) patch features after ln_post and proj (D = 512 for ViT-B/16);
    cls: (B, D) the modified block's [CLS] token after ln_post and proj."""

    patches: Tensor
    cls: Tensor


def project(visual: nn.Module, tokens: Tensor, grid: tuple[int, int]) -> DenseFeatures:
    """Block 12's tokens (B, T, C) -> ln_post and proj -> DenseFeatures on an (h, w) grid."""
    out = visual.ln_post(tokens) @ visual.proj  # (B, T, D)
    patches = out[:, 1:].reshape(out.shape[0], *grid, -1).permute(0, 3, 1, 2)
    return DenseFeatures(patches=patches, cls=out[:, 0])


class Method(nn.Module):
    """A training-free change to the last block of a CLIP ViT.

    ``forward(visual, images)``: images (B, 3, H, W) CLIP-normalised, H and W multiples of
    the patch size -> :class:`DenseFeatures`. Subclasses define :meth:`attention` (the A of
    block 12, or None for the identity) and ``keeps_residual``.
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    keeps_residual: ClassVar[bool]
    #: T x T softmax maps :meth:`attention` computes (0: the identity), for the FLOP model
    attention_maps: ClassVar[int] = 1

    def attention(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor | None:
        """A (B, H, T, T) fp32 from q, k, v (B, H, T, hd), or None for the identity."""
        raise NotImplementedError

    def final_block(
        self, block: nn.Module, z11: Tensor, parts: ReAttnParts | None = None
    ) -> Tensor:
        """Block 12 under this method: z(11) (B, T, C) -> tokens (B, T, C).

        ``parts`` (ReAttnCLIP's A_refine pieces) replace entries of this method's A.
        """
        q, k, v = qkv(block.attn, block.ln_1(z11))
        a = None if parts is not None and parts.replaces_all else self.attention(q, k, v)
        if parts is not None:
            a = refine_attention(a, parts, z11.shape[1])
        mixed = v if a is None else a.to(v.dtype) @ v
        out = block.attn.out_proj(merge_heads(mixed))
        if not self.keeps_residual:
            return out
        x = z11 + block.ls_1(out)
        return x + block.ls_2(block.mlp(block.ln_2(x)))

    def forward(self, visual: nn.Module, images: Tensor) -> DenseFeatures:
        patch = int(visual.conv1.kernel_size[0])
        grid = (images.shape[-2] // patch, images.shape[-1] // patch)
        trunk = run_trunk(visual, images)
        tokens = self.final_block(visual.transformer.resblocks[-1], trunk.z[11])
        return project(visual, tokens, grid)

    def extra_repr(self) -> str:
        return f"name={self.name!r}"


class BaseMethod(Method):
    """A method that is only a choice of A (and of keeping block 12's residual and FFN);
    ``reattn_base``: whether ReAttnCLIP may start from it (its ``base``)."""

    reattn_base: ClassVar[bool] = True


class Vanilla(BaseMethod):
    name = "vanilla"
    attention_maps = 1
    summary = "CLIP's own last block: softmax(q k^T s)"
    keeps_residual = True
    reattn_base = False  # SPEC 2.3: A_refine starts from a training-free base

    def attention(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return softmax_attention(q, k)


class MaskCLIP(BaseMethod):
    name = "maskclip"
    attention_maps = 0
    summary = "identity attention (the value path), no residual or FFN"
    keeps_residual = False

    def attention(self, q: Tensor, k: Tensor, v: Tensor) -> None:
        return None


class SCLIP(BaseMethod):
    name = "sclip"
    attention_maps = 2
    summary = "softmax(q q^T s) + softmax(k k^T s), residual and FFN kept"
    keeps_residual = True

    def attention(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return softmax_attention(q, q) + softmax_attention(k, k)


class ClearCLIP(BaseMethod):
    name = "clearclip"
    attention_maps = 1
    summary = "softmax(q q^T s), no residual or FFN"
    keeps_residual = False

    def attention(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return softmax_attention(q, q)


class SegEarthOV(BaseMethod):
    name = "segearth-ov"
    attention_maps = 3
    summary = "softmax(qq) + softmax(kk) + softmax(vv) (rows sum to 3), no residual or FFN"
    keeps_residual = False

    def attention(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        # rows sum to 3: SegEarth-OV does not renormalise
        return softmax_attention(q, q) + softmax_attention(k, k) + softmax_attention(v, v)


BASE_METHODS: dict[str, type[BaseMethod]] = {
    cls.name: cls for cls in (Vanilla, MaskCLIP, SCLIP, ClearCLIP, SegEarthOV)
}
#: The bases ReAttnCLIP may sit on (config key ``base``).
REATTN_BASES: tuple[str, ...] = tuple(n for n, c in BASE_METHODS.items() if c.reattn_base)


class ReAttnCLIP(Method):
    """ReAttnCLIP's A_refine on a base method (SPEC 2.3).

    A_refine = [[ Ā(0,0), Ā(0,1:N) ], [ 0, S ]], S = alpha * S_rot + sum_l beta_l P(l).
    S_rot averages softmax(X X^T / sqrt(C)) of the patch tokens z(k), k in ``xx_layers``,
    over the ``rotations`` (degrees) weighted by ``rotation_weights``; P(l) is block l's
    head-averaged attention, l in ``fuse_layers``; Ā(0,:) the mean [CLS] row of
    ``cls_layers``. ``patch_patch``/``cls_row`` = "base" and ``cls_col`` = "base" keep the
    base's entries instead (the ablations).
    """

    name = "reattnclip"
    summary = "A_refine: rotated X X^T similarity fused with middle-layer attention"

    def __init__(
        self,
        base: BaseMethod,
        *,
        alpha: float,
        betas: Sequence[float],
        fuse_layers: Sequence[int],
        cls_layers: Sequence[int],
        xx_layers: Sequence[int],
        xx_norm: str,
        rotations: Sequence[int],
        rotation_weights: Sequence[float],
        patch_patch: str = "reattn",
        cls_row: str = "reattn",
        cls_col: str = "zero",
    ) -> None:
        super().__init__()
        self.base = base
        self.alpha = float(alpha)
        self.betas = dict(zip(fuse_layers, betas, strict=True))
        self.fuse_layers = tuple(fuse_layers)
        self.cls_layers = tuple(cls_layers)
        self.xx_layers = tuple(xx_layers)
        self.xx_norm = xx_norm
        self.rotations = tuple(rotations)
        self.rotation_weights = dict(zip(rotations, rotation_weights, strict=True))
        self.patch_patch = patch_patch
        self.cls_row = cls_row
        self.cls_col = cls_col

    @property
    def keeps_residual(self) -> bool:  # type: ignore[override]
        return self.base.keeps_residual

    def attention(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor | None:
        return self.base.attention(q, k, v)

    def trunk_passes(
        self, visual: nn.Module, images: Tensor
    ) -> tuple[TrunkOutput, dict[int, TrunkOutput]]:
        """Blocks 1..11 on the crops and, for X X^T, on their rotations.

        Rotations whose crops share a shape run as one batch (all four for square crops);
        the unrotated crops come first, and only their attention maps are kept.
        Returns (unrotated pass, {degrees: pass whose z holds the rotated crops' streams}).
        """
        batch = images.shape[0]
        need_pp = self.patch_patch == "reattn"
        attn_layers: set[int] = set()
        if need_pp:
            attn_layers |= set(self.fuse_layers)
        if self.cls_row == "reattn":
            attn_layers |= set(self.cls_layers)
        z_layers = set(self.xx_layers) if need_pp else set()
        rotations = [r for r in self.rotations if r != 0] if need_pp else []

        groups: dict[tuple[int, int], list[int]] = {tuple(images.shape[-2:]): [0]}
        for degrees in rotations:
            shape = tuple(rotate(images[:1, :1], degrees).shape[-2:])
            groups.setdefault(shape, []).append(degrees)

        passes: dict[int, TrunkOutput] = {}
        for members in groups.values():
            stacked = torch.cat([rotate(images, d) for d in members])
            out = run_trunk(visual, stacked, z_layers, attn_layers, attn_batch=batch)
            for i, degrees in enumerate(members):
                z = {k: t[i * batch : (i + 1) * batch] for k, t in out.z.items()}
                passes[degrees] = TrunkOutput(z=z, attn=out.attn if degrees == 0 else {})
        return passes[0], passes

    def parts(
        self,
        visual: nn.Module,
        ground: TrunkOutput,
        passes: dict[int, TrunkOutput],
        grid: tuple[int, int],
    ) -> ReAttnParts:
        """The pieces of A_refine from the trunk passes; grid: (h, w) patches."""
        patch_patch = cls_row = None
        if self.patch_patch == "reattn":
            ln1 = visual.transformer.resblocks[-1].ln_1
            width = int(visual.conv1.out_channels)
            xs = {}
            for degrees in self.rotations:
                for k in self.xx_layers:
                    x = passes[degrees].z[k]
                    if self.xx_norm == "ln1":
                        x = ln1(x)
                    elif self.xx_norm == "l2":
                        x = x / x.norm(dim=-1, keepdim=True)
                    xs[(degrees, k)] = to_ground_order(x[:, 1:], *grid, degrees)
            s_rot = rotated_similarity(xs, self.rotation_weights, scale=width**-0.5)
            maps = {layer: ground.attn[layer] for layer in self.fuse_layers}
            patch_patch = fused_patch_attention(s_rot, maps, self.alpha, self.betas)
        if self.cls_row == "reattn":
            cls_row = mean_cls_row({layer: ground.attn[layer] for layer in self.cls_layers})
        return ReAttnParts(
            patch_patch=patch_patch, cls_row=cls_row, zero_cls_col=self.cls_col == "zero"
        )

    def forward(self, visual: nn.Module, images: Tensor) -> DenseFeatures:
        patch = int(visual.conv1.kernel_size[0])
        grid = (images.shape[-2] // patch, images.shape[-1] // patch)
        ground, passes = self.trunk_passes(visual, images)
        parts = self.parts(visual, ground, passes, grid)
        tokens = self.final_block(visual.transformer.resblocks[-1], ground.z[11], parts)
        return project(visual, tokens, grid)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, alpha={self.alpha}, rotations={self.rotations}"


METHODS: dict[str, type[Method]] = {**BASE_METHODS, ReAttnCLIP.name: ReAttnCLIP}
"""Every method by name, in the order the docs list them."""
