"""The model as one ``torch.nn.Module``: normalised crops in, per-query cosine logits out
(SPEC 2.4-2.7).

:class:`Segmenter` owns the CLIP model (vision and text towers), the method
(:mod:`reattn_batch.workers.methods`: the change to block 12), the upsampler (SimFeatUp or
None for bilinear) and the query embeddings (a buffer). Per crop: zero-pad to a multiple
of 16 (left = pad // 2), dense features under the method, SimFeatUp x16 guided by the
normalised crop (or bilinear logits), cosine with every text query plus lambda_cls times
the [CLS] cosine, padding cut off.

Every place that needs a model builds it through :func:`build_segmenter`
(``reattn_batch.workers.model_spec``) or :meth:`Segmenter.from_parts`: the CLI's
``segment``, the block tasks of ``run`` (through the model cache), ``eval`` and the Python
API's ``load_model``.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reattn_batch.workers.backbone import Backbone
from reattn_batch.workers.batching import resolve_batch_size
from reattn_batch.workers.config import MethodConfig
from reattn_batch.workers.errors import ModelError
from reattn_batch.workers.methods import BASE_METHODS, DenseFeatures, Method, ReAttnCLIP
from reattn_batch.workers.upsampled_logits import upsampled_cosines

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
        raise ModelError("device=cuda: no CUDA GPU is visible here; use device=cpu or auto")
    return torch.device(device)


def autocast_dtype(cfg_dtype: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype on CUDA (None = plain fp32). CPU always runs fp32."""
    if device.type != "cuda" or cfg_dtype == "fp32":
        return None
    return {"auto": torch.float16, "fp16": torch.float16, "bf16": torch.bfloat16}[cfg_dtype]


def build_method(cfg: MethodConfig) -> Method:
    """The method module that ``cfg`` names, with its hyperparameters (SPEC 2.2, 2.3)."""
    if cfg.method != ReAttnCLIP.name:
        return BASE_METHODS[cfg.method]()
    return ReAttnCLIP(
        BASE_METHODS[cfg.base](),
        alpha=cfg.alpha,
        betas=cfg.betas,
        fuse_layers=cfg.fuse_layers,
        cls_layers=cfg.cls_layers,
        xx_layers=cfg.xx_layers,
        xx_norm=cfg.xx_norm,
        rotations=cfg.rotations,
        rotation_weights=cfg.rotation_weights,
        patch_patch=cfg.patch_patch,
        cls_row=cfg.cls_row,
        cls_col=cfg.cls_col,
    )


class Segmenter(nn.Module):
    """CLIP + method + upsampler + query embeddings: crops -> raw per-query logits.

    Built on the CPU; move it like any module (``.to(device)``, ``.half()``); its device
    is that of its parameters. ``forward(crops)``: (B, 3, h, w) CLIP-normalised crops,
    h, w <= ``cfg.crop`` -> (B, Q, h, w) raw logits (cosine + lambda_cls * [CLS] cosine),
    float32. On CUDA ``cfg.dtype`` (fp16/bf16, ``auto`` = fp16) runs the forward under
    autocast; any outer autocast the caller opens applies as usual.

    Attributes: ``clip`` (the open_clip CLIP model), ``method`` (a
    :class:`~reattn_batch.workers.methods.Method`), ``upsampler`` (a SimFeatUp module or
    None), ``queries`` (buffer, (Q, D) unit text embeddings), ``cfg`` (the MethodConfig),
    ``backbone`` (the CLIP model with the identity of its weights).
    """

    queries: Tensor

    def __init__(
        self,
        backbone: Backbone,
        cfg: MethodConfig,
        queries: Tensor,
        upsampler: nn.Module | None = None,
        method: Method | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.clip = backbone.model
        self.method = method if method is not None else build_method(cfg)
        self.upsampler = upsampler
        self.register_buffer("queries", queries.detach().to(torch.float32).clone())
        self._batch_sizes: dict[torch.device, int] = {}
        self._batch_size_override: int | None = None
        self.classes = None  # the ClassList of ``queries``, where the Python API set them

    # --- what callers ask of a model -----------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.queries.device

    @property
    def num_queries(self) -> int:
        return int(self.queries.shape[0])

    @property
    def batch_size(self) -> int:
        """Crops per forward pass: ``cfg.batch_size``, or ``auto`` resolved for the device
        the model is on now (reattn_batch.workers.batching); settable."""
        if self._batch_size_override is not None:
            return self._batch_size_override
        device = self.device
        if device not in self._batch_sizes:
            visual = self.clip.visual
            self._batch_sizes[device] = resolve_batch_size(
                device, self.cfg, self.num_queries, self.upsampler is not None,
                width=self.backbone.width, heads=visual.transformer.resblocks[-1].attn.num_heads,
                feat_dim=int(visual.proj.shape[1]), patch=self.backbone.patch_size,
            )  # fmt: skip
        return self._batch_sizes[device]

    @batch_size.setter
    def batch_size(self, value: int) -> None:
        self._batch_size_override = int(value)

    def set_queries(self, queries: Tensor) -> None:
        """Replace the (Q, D) unit query embeddings (kept on the model's device)."""
        self.queries = queries.detach().to(self.device, torch.float32).clone()

    def _autocast(self) -> contextlib.AbstractContextManager:
        dtype = autocast_dtype(self.cfg.dtype, self.device)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    # --- the model -------------------------------------------------------------------
    def encode(self, padded: Tensor) -> DenseFeatures:
        """padded: (B, 3, H, W), H and W multiples of the patch size -> DenseFeatures."""
        return self.method(self.clip.visual, padded)

    def forward(self, crops: Tensor) -> Tensor:
        """crops: (B, 3, h, w) normalised, h, w <= crop -> (B, Q, h, w) float32 raw logits."""
        weight = self.clip.visual.conv1.weight
        crops = crops.to(weight.device, weight.dtype)
        h, w = crops.shape[-2:]
        left, right, top, bottom = patch_padding(h, w, self.backbone.patch_size)
        padded = (
            F.pad(crops, (left, right, top, bottom)) if any((left, right, top, bottom)) else crops
        )
        patch = self.backbone.patch_size
        if self.upsampler is not None and min(padded.shape[-2:]) < MIN_JBU_GRID * patch:
            raise ModelError(
                f"a {h}x{w} px image is too small for SimFeatUp (its reflect padding needs at "
                f"least {MIN_JBU_GRID * patch} px a side): use upsampler=bilinear"
            )
        queries = self.queries.float()
        with self._autocast():
            dense = self.encode(padded)
            cls = dense.cls.float()
            cls_logits = (cls / cls.norm(dim=-1, keepdim=True)) @ queries.T  # (B, Q)
            if self.upsampler is not None:
                logits = upsampled_cosines(
                    self.upsampler, dense.patches, padded, queries, self.cfg.upsampler_path
                )  # (B, Q, H, W)
                if self.cfg.lambda_cls:
                    logits = logits + self.cfg.lambda_cls * cls_logits[:, :, None, None]
            else:
                feats = dense.patches.float()
                feats = feats / feats.norm(dim=1, keepdim=True)
                logits = torch.einsum("bdhw,qd->bqhw", feats, queries)
                if self.cfg.lambda_cls:
                    logits = logits + self.cfg.lambda_cls * cls_logits[:, :, None, None]
                logits = F.interpolate(logits, size=padded.shape[-2:], mode="bilinear")
        return logits[:, :, top : top + h, left : left + w].float()

    @torch.no_grad()
    def crop_logits(self, crops: Tensor) -> Tensor:
        """``forward`` without autograd: what the block tasks, ``segment`` and ``eval`` call."""
        return self(crops)

    def extra_repr(self) -> str:
        return f"queries={self.num_queries}, batch_size={self.cfg.batch_size or 'auto'}"
