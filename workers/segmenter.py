"""The crop segmenter: normalised crops in, per-query cosine logits out (SPEC 2.4-2.7).

Per crop: zero-pad to a multiple of 16 (left = pad // 2), dense features under the
method, SimFeatUp x16 guided by the normalised crop (or bilinear logits), cosine with
every text query plus lambda_cls times the [CLS] cosine, padding cut off.
"""

from __future__ import annotations

import contextlib
import dataclasses

import numpy as np
import torch
import torch.nn.functional as F
from reattn_batch.workers.backbone import Backbone
from reattn_batch.workers.batching import resolve_batch_size
from reattn_batch.workers.config import MethodConfig
from reattn_batch.workers.encoder import encode_crops
from reattn_batch.workers.errors import UserError
from reattn_batch.workers.upsampled_logits import upsampled_cosines
from torch import Tensor, nn

CLIP_MEAN = (122.771, 116.746, 104.094)  # on 0..255 RGB
MIN_JBU_GRID = 3  # patches a side: jbu_one's radius-5 reflect padding at the first x2 step
CLIP_STD = (68.501, 66.632, 70.323)


def normalise(rgb: np.ndarray) -> Tensor:
    """(H, W, 3) RGB in 0..255 (uint8 or float) -> (3, H, W) float32 CLIP-normalised."""
    return normalise_chw(
        torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1)
    )


def normalise_chw(x: Tensor) -> Tensor:
    """(3, H, W) float32 RGB in 0..255 -> (3, H, W) CLIP-normalised."""
    mean = torch.tensor(CLIP_MEAN, device=x.device).view(3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device).view(3, 1, 1)
    return (x - mean) / std


def patch_padding(height: int, width: int, patch: int) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) zero padding up to multiples of ``patch``; left = pad // 2."""
    pad_w = -width % patch
    pad_h = -height % patch
    return pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU is visible here; use --device cpu or auto")
    return torch.device(device)


def autocast_dtype(cfg_dtype: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype on CUDA (None = plain fp32). CPU always runs fp32."""
    if device.type != "cuda" or cfg_dtype == "fp32":
        return None
    return {"auto": torch.float16, "fp16": torch.float16, "bf16": torch.bfloat16}[cfg_dtype]


@dataclasses.dataclass
class CropSegmenter:
    """Everything needed to turn crops into logits; one per worker process.

    queries: (Q, D) unit text embeddings; upsampler: a SimFeatUp module or None (bilinear).
    batch_size: crops per forward pass, resolved from ``cfg.batch_size`` for the device
    (reattn_batch.workers.batching) when the segmenter is built.
    """

    backbone: Backbone
    cfg: MethodConfig
    queries: Tensor
    upsampler: nn.Module | None = None
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    batch_size: int = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.backbone.model.to(self.device)
        if self.upsampler is not None:
            self.upsampler.to(self.device)
        self.queries = self.queries.to(self.device, torch.float32)
        visual = self.backbone.visual
        self.batch_size = resolve_batch_size(
            self.device, self.cfg, self.num_queries, self.upsampler is not None,
            width=self.backbone.width, heads=visual.transformer.resblocks[-1].attn.num_heads,
            feat_dim=int(visual.proj.shape[1]), patch=self.backbone.patch_size,
        )  # fmt: skip

    @property
    def num_queries(self) -> int:
        return int(self.queries.shape[0])

    def _autocast(self) -> contextlib.AbstractContextManager:
        dtype = autocast_dtype(self.cfg.dtype, self.device)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    @torch.no_grad()
    def crop_logits(self, crops: Tensor) -> Tensor:
        """crops: (B, 3, h, w) normalised, h, w <= crop -> (B, Q, h, w) float32 raw logits."""
        crops = crops.to(self.device, torch.float32)
        h, w = crops.shape[-2:]
        left, right, top, bottom = patch_padding(h, w, self.backbone.patch_size)
        padded = (
            F.pad(crops, (left, right, top, bottom)) if any((left, right, top, bottom)) else crops
        )
        patch = self.backbone.patch_size
        if self.upsampler is not None and min(padded.shape[-2:]) < MIN_JBU_GRID * patch:
            raise UserError(
                f"a {h}x{w} px image is too small for SimFeatUp (its reflect padding needs at "
                f"least {MIN_JBU_GRID * patch} px a side): use --upsampler bilinear"
            )
        with self._autocast():
            dense = encode_crops(self.backbone, self.cfg, padded)
            cls = dense.cls.float()
            cls_logits = (cls / cls.norm(dim=-1, keepdim=True)) @ self.queries.T  # (B, Q)
            if self.upsampler is not None:
                logits = upsampled_cosines(
                    self.upsampler, dense.patches, padded, self.queries, self.cfg.upsampler_path
                )  # (B, Q, H, W)
                if self.cfg.lambda_cls:
                    logits = logits + self.cfg.lambda_cls * cls_logits[:, :, None, None]
            else:
                feats = dense.patches.float()
                feats = feats / feats.norm(dim=1, keepdim=True)
                logits = torch.einsum("bdhw,qd->bqhw", feats, self.queries)
                if self.cfg.lambda_cls:
                    logits = logits + self.cfg.lambda_cls * cls_logits[:, :, None, None]
                logits = F.interpolate(logits, size=padded.shape[-2:], mode="bilinear")
        return logits[:, :, top : top + h, left : left + w].float()
