"""CLIP ViT-B/16 backbone and its weights (SPEC 2.1).

``--clip-weights`` takes one of

- ``openai``: OpenAI's weights through open_clip's downloader (needs internet once);
- a local file: OpenAI's TorchScript ``ViT-B-16.pt`` or a plain state dict, read
  without executing code (see :mod:`reattn_batch.workers.checkpoint`);
- ``random``: a seeded, deliberately non-degenerate init for offline tests and
  benchmarks. Numbers from it are never accuracy; it is recorded as such.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import socket
from functools import cache
from pathlib import Path

import open_clip
import torch
from torch import nn

from reattn_batch.configs import CONFIG_DIR
from reattn_batch.workers.errors import ModelError

log = logging.getLogger(__name__)

# Small architectures of ours (e.g. ViT-T-16-test: ViT-B/16's shape with 12 blocks of
# width 64) for fast tests and benchmarks, selectable with --set clip_model=NAME.
MODEL_CONFIGS = CONFIG_DIR / "models"
open_clip.add_model_config(MODEL_CONFIGS)


def allowed_clip_models() -> tuple[str, ...]:
    """The ``clip_model`` names this program builds: open_clip's own CLIP ViT architectures
    (``open_clip.list_models()``, plus ours from configs/models), restricted to those built
    wholly from the local config with open_clip's own towers and tokenizer.

    Refused: ``hf-hub:``/``local-dir:`` names (remote or arbitrary configs and weights),
    and architectures with a timm vision tower or a Hugging Face text tower or tokenizer,
    whose construction fetches code, configs or weights from a hub. Not cached: configs
    registered after start-up (``open_clip.add_model_config``) count too.
    """
    allowed = []
    for name in open_clip.list_models():
        cfg = open_clip.get_model_config(name) or {}
        vision, text = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
        remote = any(k.startswith("timm_") for k in vision) or any(
            k.startswith("hf_") for k in text
        )
        vit = isinstance(vision.get("layers"), int) and "patch_size" in vision
        if vit and not remote and not cfg.get("custom_text") and not cfg.get("multimodal_cfg"):
            allowed.append(name)
    return tuple(allowed)


#: What :func:`check_clip_model` asks for instead of a refused name.
CLIP_MODEL_RULE = (
    "name an open_clip ViT architecture that is built from its local config "
    "(e.g. ViT-B-16-quickgelu, ViT-B-16, ViT-T-16-test; see open_clip.list_models()), "
    "never a hf-hub:/local-dir: model or one with timm or Hugging Face towers"
)


def check_clip_model(name: str, where: str = "config key 'clip_model'") -> None:
    """UserError naming ``where`` unless ``name`` is in :func:`allowed_clip_models`."""
    if name not in allowed_clip_models():
        raise ModelError(f"{where}: {name!r} is not allowed; {CLIP_MODEL_RULE}")


RANDOM_WARNING = (
    "CLIP weights are RANDOM (--clip-weights random): outputs are for tests and "
    "benchmarks only and mean nothing as segmentation."
)


@dataclasses.dataclass(frozen=True)
class WeightsIdentity:
    """Where a model's weights came from; recorded in every output.

    ``digest`` is the sha256 of the weights file, or ``seed=N`` for random weights.
    """

    source: str  # "openai" | "file" | "random"
    name: str  # architecture / file name
    digest: str
    random: bool

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)

    @property
    def key(self) -> str:
        return f"{self.source}:{self.name}:{self.digest}"


@dataclasses.dataclass
class Backbone:
    """An open_clip CLIP model in eval mode plus the identity of its weights."""

    model: open_clip.CLIP
    identity: WeightsIdentity
    clip_model: str = "ViT-B-16-quickgelu"  # open_clip architecture name (picks the tokenizer)

    @property
    def visual(self) -> nn.Module:
        return self.model.visual

    @property
    def width(self) -> int:
        """Residual-stream width d (768 for ViT-B/16)."""
        return int(self.model.visual.conv1.out_channels)

    @property
    def patch_size(self) -> int:
        return int(self.model.visual.conv1.kernel_size[0])

    @property
    def num_heads(self) -> int:
        return int(self.model.visual.transformer.resblocks[-1].attn.num_heads)


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read once per process for each state of the file.

    The state is (device, inode, size, mtime_ns, ctime_ns): a file replaced by a rename
    changes inode; an edit in place changes mtime and ctime; and an edit that puts the old
    mtime back (``touch -d``, ``os.utime``) still changes ctime, which no user call can
    set. Left out, as too dear for multi-GB weights on every call: an edit of the same
    size within one timestamp tick of the file system (coarse on some network file
    systems), which would keep the old digest until the file is touched again.
    """
    st = path.stat()
    state = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    return _file_sha256(str(path.resolve()), state)


@cache
def _file_sha256(path: str, state: tuple[int, ...]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def load_backbone(weights: str, clip_model: str = "ViT-B-16-quickgelu", seed: int = 0) -> Backbone:
    """Build the CLIP model for ``--clip-weights`` on the CPU, in fp32 and eval mode."""
    check_clip_model(clip_model)
    if weights == "random":
        model = open_clip.create_model(clip_model, pretrained=None)
        init_random_nondegenerate(model, seed)
        identity = WeightsIdentity("random", clip_model, f"seed={seed}", random=True)
        log.warning(RANDOM_WARNING)
    elif weights == "openai":
        model, identity = _load_openai(clip_model)
    else:
        model, identity = _load_file(Path(weights), clip_model)
    model = model.float().eval().requires_grad_(False)
    return Backbone(model=model, identity=identity, clip_model=clip_model)


def _hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """A quick TCP probe, so that an offline machine fails in seconds, not minutes of retries."""
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _openai_cached(arch: str) -> bool:
    """Whether open_clip's hub cache already holds OpenAI's weights for ``arch``."""
    from huggingface_hub import try_to_load_from_cache

    hub = (open_clip.get_pretrained_cfg(arch, "openai") or {}).get("hf_hub", "")
    repo = hub.rstrip("/").split("/", 2)
    repo_id = "/".join(repo[:2])
    for filename in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
        if isinstance(try_to_load_from_cache(repo_id, filename), str):
            return True
    return False


def require_openai_weights(arch: str) -> None:
    """Fail at once, with one line, when OpenAI's weights are neither cached nor fetchable."""
    if not _openai_cached(arch) and not _hub_reachable():
        raise ModelError(
            f"clip_weights=openai: OpenAI's {arch} weights are not cached and the model hub "
            "is unreachable (offline?): pass clip_weights=PATH "
            "(OpenAI's ViT-B-16.pt or a state dict)"
        )


def _load_openai(clip_model: str) -> tuple[open_clip.CLIP, WeightsIdentity]:
    arch = clip_model.removesuffix("-quickgelu")
    require_openai_weights(arch)
    try:
        model = open_clip.create_model(arch, pretrained="openai", force_quick_gelu=True)
    except Exception as exc:  # hub clients raise many types when offline
        raise ModelError(
            f"could not fetch OpenAI's {arch} weights ({type(exc).__name__}; offline?): "
            "pass clip_weights=PATH (OpenAI's ViT-B-16.pt or a state dict), "
            "or clip_weights=random for a dry run"
        ) from None
    digest = _state_digest(model)
    return model, WeightsIdentity("openai", arch, digest, random=False)


def _load_file(path: Path, clip_model: str) -> tuple[open_clip.CLIP, WeightsIdentity]:
    from reattn_batch.workers.checkpoint import read_clip_state_dict

    state = read_clip_state_dict(path)
    model = open_clip.create_model(clip_model, pretrained=None)
    state = {
        k: v
        for k, v in state.items()
        if k not in ("input_resolution", "context_length", "vocab_size")
    }
    expected = model.state_dict()
    # TorchScript archives keep non-persistent buffers such as the text causal mask
    state = {k: v for k, v in state.items() if k in expected or not k.endswith("attn_mask")}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        what = f"lacks '{missing[0]}'" if missing else f"has unexpected '{unexpected[0]}'"
        raise ModelError(
            f"clip_weights={path}: not {clip_model} weights (the state dict {what}); "
            "pass OpenAI's ViT-B-16.pt or an open_clip ViT-B-16 state dict"
        )
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise ModelError(
                f"clip_weights={path}: '{key}' has shape {tuple(tensor.shape)}, "
                f"{clip_model} needs {tuple(expected[key].shape)}; pass ViT-B/16 weights"
            )
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return model, WeightsIdentity("file", path.name, file_sha256(path), random=False)


def _state_digest(model: nn.Module) -> str:
    h = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        h.update(key.encode())
        h.update(tensor.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


RESIDUAL_BRANCH_SCALE = 0.3


@torch.no_grad()
def init_random_nondegenerate(model: open_clip.CLIP, seed: int) -> None:
    """Seeded init under which attention is peaked and tokens differ (SPEC 2.1).

    open_clip's default init gives near-uniform attention and near-identical patch
    tokens, which hides most bugs. Here q and k are scaled so that q.k / sqrt(head_dim)
    has a standard deviation of about 4, every bias is non-zero, LayerNorm gains are
    drawn from U(0.5, 1.5), and the residual branches (attention out_proj, MLP c_proj)
    are scaled by 0.3 so that tokens stay distinct through 12 blocks instead of
    converging on the common component the MLPs add.
    """
    g = torch.Generator().manual_seed(seed)

    def normal_(t: torch.Tensor, std: float) -> None:
        t.copy_(torch.randn(t.shape, generator=g) * std)

    for module in model.modules():
        if isinstance(module, nn.LayerNorm):
            module.weight.copy_(0.5 + torch.rand(module.weight.shape, generator=g))
            normal_(module.bias, 0.1)
        elif isinstance(module, nn.MultiheadAttention):
            width = module.embed_dim
            # q, k: per-component variance 4 -> logit std ~ 4 after the 1/sqrt(hd) scale.
            normal_(module.in_proj_weight, math.sqrt(4.0 / width))
            normal_(module.in_proj_bias, 0.5)
        elif isinstance(module, nn.Linear):
            normal_(module.weight, 1.0 / math.sqrt(module.in_features))
            normal_(module.bias, 0.1)
        elif isinstance(module, nn.Conv2d):
            fan_in = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
            normal_(module.weight, 1.0 / math.sqrt(fan_in))
    for block in [*model.visual.transformer.resblocks, *model.transformer.resblocks]:
        for branch in (block.attn.out_proj, block.mlp.c_proj):
            normal_(branch.weight, RESIDUAL_BRANCH_SCALE / math.sqrt(branch.in_features))
            normal_(branch.bias, 0.03)
    visual = model.visual
    normal_(visual.class_embedding, 1.0)
    normal_(visual.positional_embedding, 0.5)
    normal_(visual.proj, 1.0 / math.sqrt(visual.proj.shape[0]))
    normal_(model.token_embedding.weight, 1.0)
    normal_(model.positional_embedding, 0.5)
    normal_(model.text_projection, 1.0 / math.sqrt(model.text_projection.shape[0]))
