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

Modules: ``modules`` (the nn.Modules), ``conv`` (the adaptive convolution: fused or tap by tap),
``bicubic`` (the resize-and-pad matrices), ``weights`` (the pinned default weights and
their cache), ``loading`` (checkpoints -> modules, checked).
"""

from reattn_batch.workers.upsampler.bicubic import bicubic_reflect_padded
from reattn_batch.workers.upsampler.conv import adaptive_conv, tap_loop
from reattn_batch.workers.upsampler.loading import load_upsampler
from reattn_batch.workers.upsampler.modules import (
    UPSAMPLER_KINDS,
    JBUOne,
    JBUStack,
    JointBilateralStep,
)
from reattn_batch.workers.upsampler.weights import (
    JBU_ONE,
    default_upsampler_weights,
    default_weights_path,
)

__all__ = [
    "JBU_ONE",
    "UPSAMPLER_KINDS",
    "JBUOne",
    "JBUStack",
    "JointBilateralStep",
    "adaptive_conv",
    "bicubic_reflect_padded",
    "default_upsampler_weights",
    "default_weights_path",
    "load_upsampler",
    "tap_loop",
]
