"""What identifies a worker's model, and building it (SPEC 3.4).

A ModelSpec is small and picklable: Dask ships it in the graph and each worker
process builds the model from it once (see reattn_batch.workers.model_cache). Its fingerprint
names the weights and every hyperparameter.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import open_clip
import torch

from reattn_batch.workers import upsampler as upsampler_module
from reattn_batch.workers.backbone import (
    Backbone,
    WeightsIdentity,
    file_sha256,
    load_backbone,
    require_openai_weights,
)
from reattn_batch.workers.checkpoint import looks_like_checkpoint
from reattn_batch.workers.classes import ClassList
from reattn_batch.workers.config import MethodConfig
from reattn_batch.workers.errors import ModelError
from reattn_batch.workers.segmenter import Segmenter, resolve_device
from reattn_batch.workers.text import query_embeddings
from reattn_batch.workers.upsampler import default_upsampler_weights, load_upsampler


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """clip_weights: 'openai' | PATH | 'random'; upsampler: jbu_one | jbu_stack | bilinear."""

    clip_weights: str
    upsampler: str
    upsampler_weights: str | None
    cfg: MethodConfig
    device: str = "auto"

    def as_dict(self) -> dict[str, object]:
        return {
            "clip_weights": self.clip_weights,
            "upsampler": self.upsampler,
            "upsampler_weights": self.upsampler_weights,
            "config": self.cfg.as_dict(),
        }

    @property
    def fingerprint(self) -> str:
        """Stable hash of weights sources and every hyperparameter (not the device)."""
        blob = json.dumps(self.as_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def weights_content_key(spec: ModelSpec) -> str:
    """The content of the spec's weights, for keying loaded models (SPEC 3.4).

    The sha256 of each weights file the spec names (``--clip-weights PATH``,
    ``--upsampler-weights PATH``, see ``backbone.file_sha256`` for when a file
    is read again), the pinned sha256 of the default SimFeatUp file (it is checked against
    it when loaded), and the source name for ``random``/``openai``/``bilinear``. A file
    replaced at the same path, even with the same size, gives a new key. A file that does
    not exist gives a key saying so (loading it then fails with one line).
    """
    parts = []
    for kind, source in (("clip", spec.clip_weights), ("upsampler", spec.upsampler_weights)):
        if kind == "clip" and source in ("random", "openai"):
            parts.append(f"clip={source}")
        elif kind == "upsampler" and spec.upsampler == "bilinear":
            parts.append("upsampler=bilinear")
        elif kind == "upsampler" and source is None:  # only jbu_one has a default
            parts.append(f"upsampler=pinned:{upsampler_module.JBU_ONE.sha256}")
        else:
            path = Path(str(source)).expanduser()
            digest = file_sha256(path) if path.is_file() else "missing"
            parts.append(f"{kind}={digest}")
    return ";".join(parts)


def describe_weights(spec: ModelSpec) -> dict[str, dict[str, object]]:
    """Identities of the spec's weights, without loading a model (for metadata and the
    run fingerprint). Fails early, with one line, on a missing file or offline default."""
    clip_model = spec.cfg.clip_model
    if spec.clip_weights == "random":
        clip = WeightsIdentity("random", clip_model, f"seed={spec.cfg.random_seed}", random=True)
    elif spec.clip_weights == "openai":
        arch = clip_model.removesuffix("-quickgelu")
        require_openai_weights(arch)
        url = (open_clip.get_pretrained_cfg(arch, "openai") or {}).get("url", "")
        digest = next((part for part in url.split("/") if len(part) == 64), url)
        clip = WeightsIdentity("openai", arch, digest, random=False)
    else:
        path = Path(spec.clip_weights)
        if not path.is_file():
            raise ModelError(
                f"clip_weights={path}: no such file; pass the path of OpenAI's ViT-B-16.pt "
                "or a state dict, or 'openai' on a machine with internet"
            )
        if not looks_like_checkpoint(path):
            raise ModelError(
                f"clip_weights={path}: not a PyTorch checkpoint (neither a zip archive nor a "
                "pickle); pass OpenAI's ViT-B-16.pt or a state dict saved with torch.save"
            )
        clip = WeightsIdentity("file", path.name, file_sha256(path), random=False)
    upsampler: dict[str, object] = {"kind": spec.upsampler}
    if spec.upsampler != "bilinear":
        path = Path(spec.upsampler_weights or default_upsampler_weights(spec.upsampler))
        if not path.is_file():
            raise ModelError(
                f"upsampler_weights={path}: no such file; pass a SimFeatUp/FeatUp checkpoint"
            )
        upsampler |= {"name": path.name, "sha256": file_sha256(path)}
    return {"clip": clip.as_dict(), "upsampler": upsampler}


def load_model_parts(spec: ModelSpec) -> tuple[Backbone, torch.nn.Module | None]:
    """The CLIP backbone and the upsampler (None for bilinear) of a spec, on the CPU."""
    weights = spec.upsampler_weights
    if spec.upsampler != "bilinear" and weights is None:
        weights = default_upsampler_weights(spec.upsampler)
    upsampler = load_upsampler(spec.upsampler, weights)  # first: cheap, and fails fast
    backbone = load_backbone(spec.clip_weights, spec.cfg.clip_model, spec.cfg.random_seed)
    feat_dim = backbone.model.visual.proj.shape[1]
    if upsampler is not None and upsampler.fixup_proj[1].in_channels != feat_dim:
        raise ModelError(
            f"upsampler={spec.upsampler} works on 512-d CLIP ViT-B/16 features but "
            f"{spec.cfg.clip_model} gives {feat_dim}-d ones: use upsampler=bilinear"
        )
    return backbone, upsampler


def assemble_segmenter(
    spec: ModelSpec,
    parts: tuple[Backbone, torch.nn.Module | None],
    queries: torch.Tensor,
    device: torch.device | None = None,
) -> Segmenter:
    """The Segmenter of ``spec`` from its loaded parts and (Q, D) query embeddings, on
    ``device`` (default: the spec's). The one place a Segmenter is put together."""
    backbone, upsampler = parts
    segmenter = Segmenter(backbone, spec.cfg, queries, upsampler)
    segmenter.spec = spec  # what a Dask job ships to its workers to build the same model
    return segmenter.to(device if device is not None else resolve_device(spec.device))


def build_segmenter(spec: ModelSpec, classes: ClassList) -> Segmenter:
    """Load weights, embed the class queries (disk-cached) and assemble the segmenter."""
    device = resolve_device(spec.device)
    parts = load_model_parts(spec)
    return assemble_segmenter(spec, parts, query_embeddings(parts[0], classes.queries), device)
