"""Loading an upsampler from a Lightning checkpoint: which kind it holds, strict shapes."""

from __future__ import annotations

import logging
from pathlib import Path

from torch import Tensor, nn

from reattn_batch.workers.checkpoint import load_tensors_only, not_loaded
from reattn_batch.workers.errors import ModelError
from reattn_batch.workers.upsampler.modules import MODULES, UPSAMPLER_KINDS
from reattn_batch.workers.upsampler.weights import default_upsampler_weights

log = logging.getLogger(__name__)


def _detect_kind(keys: list[str]) -> str | None:
    """Which upsampler a set of (prefix-stripped) state-dict keys belongs to."""
    if any(k.startswith("up1.") for k in keys):
        return "jbu_stack"
    if any(k.startswith("up.") for k in keys):
        return "jbu_one"
    return None


def _read_upsampler_state(path: Path, label: str) -> dict[str, Tensor]:
    """The ``upsampler.*`` tensors of a Lightning checkpoint, prefix stripped."""
    fix = "pass a SimFeatUp/FeatUp .ckpt file, or upsampler=bilinear"
    if not path.is_file():
        raise ModelError(f"{label} {path} does not exist; {fix}")
    try:
        ckpt = load_tensors_only(path)
    except Exception as e:  # the reader raises many types on a corrupt or foreign file
        raise not_loaded(f"{label} {path}", e, fix) from None
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise ModelError(f"{label} {path} holds no state dict; {fix}")
    prefix = "upsampler."
    ups = {
        k[len(prefix) :]: v for k, v in state.items() if isinstance(k, str) and k.startswith(prefix)
    }
    if not ups or not all(isinstance(v, Tensor) for v in ups.values()):
        raise ModelError(f"{label} {path} holds no 'upsampler.*' tensors; {fix}")
    return ups


def load_upsampler(kind: str, weights: str | Path | None, feat_dim: int = 512) -> nn.Module | None:
    """Build the ``kind`` upsampler and load its weights strictly (eval mode, frozen).

    ``bilinear`` returns None (the caller interpolates logits). For ``jbu_one``/``jbu_stack``
    ``weights`` is a PyTorch-Lightning .ckpt whose ``state_dict`` keys start with
    ``upsampler.``; None means the default (:func:`default_upsampler_weights`). The module
    maps source (B, feat_dim, h, w), guidance (B, 3, 16h, 16w) -> (B, feat_dim, 16h, 16w).
    Any problem raises :class:`UserError` with one line.
    """
    if kind == "bilinear":
        if weights is not None:
            log.warning("--upsampler bilinear ignores --upsampler-weights %s", weights)
        return None
    if kind not in MODULES:
        raise ModelError(f"unknown upsampler={kind!r}; choose one of {', '.join(UPSAMPLER_KINDS)}")
    if weights is None:
        path, label = default_upsampler_weights(kind), "cached default upsampler weights"
    else:
        path, label = Path(weights).expanduser(), "`upsampler_weights`"
    state = _read_upsampler_state(path, label)
    held = _detect_kind(list(state))
    if held is None:
        raise ModelError(
            f"{label} {path} holds upsampler weights of no known kind (neither up.* for jbu_one "
            "nor up1..up4 for jbu_stack); pass a SimFeatUp/FeatUp .ckpt, or upsampler=bilinear"
        )
    if held != kind:
        what = {"jbu_one": "jbu_one weights (up)", "jbu_stack": "jbu_stack weights (up1..up4)"}
        raise ModelError(
            f"{label} {path} holds {what[held]} but upsampler={kind} was chosen; "
            f"pass upsampler={held}"
        )
    module = MODULES[kind](feat_dim)
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or wrong:
        detail = "; ".join(
            f"{name}: {', '.join(items[:3])}{' ...' if len(items) > 3 else ''}"
            for name, items in (("missing", missing), ("unexpected", unexpected), ("shape", wrong))
            if items
        )
        raise ModelError(
            f"{label} {path} does not match a {kind} upsampler with feat_dim {feat_dim} "
            f"({detail}); pass weights made for this CLIP backbone, or upsampler=bilinear"
        )
    module.load_state_dict(state, strict=True)
    module.eval().requires_grad_(False)
    return module
