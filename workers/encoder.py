"""Dense CLIP features of crops under a configured method (SPEC 2.2-2.4).

``encode_crops`` is the whole image side up to the upsampler: blocks 1..11 (with the
three rotated copies batched alongside for ReAttnCLIP), the method's block 12, ln_post and
proj. It is the method module of :mod:`reattn_batch.workers.methods` built from a config;
the :class:`~reattn_batch.workers.segmenter.Segmenter` holds that module itself.
"""

from __future__ import annotations

from torch import Tensor

from reattn_batch.workers.backbone import Backbone
from reattn_batch.workers.config import MethodConfig
from reattn_batch.workers.methods import DenseFeatures
from reattn_batch.workers.segmenter import build_method


def encode_crops(backbone: Backbone, cfg: MethodConfig, images: Tensor) -> DenseFeatures:
    """images: (B, 3, H, W) CLIP-normalised crops, H and W multiples of the patch size."""
    return build_method(cfg)(backbone.visual, images)
