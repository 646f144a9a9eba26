"""The upsampler modules: one joint bilateral step, SimFeatUp's jbu_one, FeatUp's jbu_stack."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reattn_batch.workers.upsampler.bicubic import bicubic_reflect_padded
from reattn_batch.workers.upsampler.conv import adaptive_conv

UPSAMPLER_KINDS = ("jbu_one", "jbu_stack", "bilinear")


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


MODULES: dict[str, type[_JBU]] = {"jbu_one": JBUOne, "jbu_stack": JBUStack}
