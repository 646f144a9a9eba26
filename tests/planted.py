"""Hand-built CLIP weights that plant a known signal: a region's colour decides its class.

``planted_state_dict()`` returns a state dict for the tiny ``ViT-T-16-test`` architecture
(12 vision blocks of width 64, 4 heads of 16, patch 16; a 2-layer text tower of width 64)
in which every tensor is set by hand, so that the real open_clip model, the real text
encoder and the real ``segment`` command must label a pure red / green / blue region with
the class "red" / "green" / "blue". Nothing is random; each step is explained below.

Residual-stream channel layout (width 64, the rest stays zero):

    0..2  +colour code c        3..5  -colour code c     (colour channels, head 0)
    6     +e, 7  -e             end-of-text marker (text side only)
    8     +1, 9  -1             [CLS] marker (image side only)

Every code comes in +/- pairs, so every token has zero mean over its 64 channels and a
LayerNorm with weight 1 and bias 0 only rescales it (its direction is kept); a zero token
stays zero (LayerNorm of 0 is 0 when the bias is 0).

Image side
  - conv1 (patch embedding): channel i and 3+i get +/- the mean over the 16x16 patch of the
    CLIP-normalised colour channel i. A patch of pure red (255, 0, 0) gives the code
    c_red = (255, 0, 0) after CLIP normalisation, about (1.93, -1.75, -1.48).
  - [CLS] embedding: the marker (+1, -1) in channels 8, 9; positional embeddings zero, so
    every patch of one colour is the same token wherever it sits; ln_pre identity.
  - Blocks 1..11: out_proj and mlp.c_proj (weights and biases) are zero, so the residual
    branches vanish and z(11) = z(0) = ln_pre(tokens). Their q and k are still the
    colour-matching projections below, so the attention maps ReAttnCLIP reads from blocks
    6..11 (its [CLS] row and its fused P(l)) are peaked on same-colour patches.
  - Block 12 (and every block's q, k): q = k = Q_GAIN * colour channels, copied into
    every head (the head-averaged maps ReAttnCLIP reads are then as peaked as one head's),
    v = identity; out_proj identity.
    With LayerNorm'd tokens of norm 8, q.q' * head_dim^-0.5 = 16 * Q_GAIN^2 * cos(c, c'):
    +16 for the same colour and below -5 for another, so any of softmax(qk), (qq), (kk),
    (vv) and ReAttnCLIP's softmax(X X^T / sqrt(64)) (= 8 cos) keeps a patch's colour, and
    maskclip's identity trivially does. Tokens are zero in channels 16..63, so heads
    2..4 carry v = 0 and add nothing whatever their attention. The MLP of block 12 is
    zero too, so vanilla and sclip, which keep the residual, add the token itself (the
    same colour code) to the attention output. The [CLS] token (q = k = 0) attends
    uniformly; its feature is never zero, so the lambda_cls debiasing term stays finite
    (it shifts every pixel of a crop alike, by at most 0.3 * 2 in cosine units).
  - ln_post identity; proj maps joint[i] = x[i] - x[3+i] (i < 3), i.e. 2 c, and the [CLS]
    marker to joint[4] = x[8] - x[9]. So a pure-colour patch's feature is c in joint 0..2.

Text side
  - token embedding: zero, except the single BPE tokens "red", "green", "blue" (colour
    code of (255,0,0), (0,255,0), (0,0,255) in channels 0..5, the very code the image side
    produces for that colour) and the end-of-text token (marker E_TEXT in channels 6, 7);
    positional embedding zero.
  - both text blocks: q = k = 0 (attention uniform over the causal prefix), v and
    out_proj identity, MLP zero, LayerNorms identity. Each token adds the mean of its
    causal prefix's LayerNorm'd tokens; every template word other than the colour word
    is the zero token, so the end-of-text token ends as a mix of the colour code (if
    any) and its own marker, whatever the template.
  - ln_final identity; text_projection: joint[i] = x[i] - x[3+i] (i < 3) and
    joint[3] = EOT_GAIN * (x[6] - x[7]). A colour word's feature is thus c plus a small
    orthogonal joint[3] part; "background" (an unplanted word) gives joint[3] only,
    orthogonal to every colour and to the image features, so no text feature is zero.

Hence cos(patch of colour X, query X) is about 0.9-1 and the other colour queries get
negative cosines (cos(c_red, c_green) is about -0.53) and "background" 0: the argmax
recovers the planted map. With ``embed_dim`` 512 (see ``register_wide_config``) the same
design fills joint dims 0..4 of 512, for the 512-channel FeatUp upsamplers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import open_clip
import torch

import reattn_batch.workers.backbone  # registers configs/models, incl. ViT-T-16-test
from reattn_batch.workers.segmenter import CLIP_MEAN, CLIP_STD

CLIP_MODEL = "ViT-T-16-test"
WIDE_CLIP_MODEL = "ViT-T-16-planted512"
PLANTED_CLASSES = "red,green,blue"
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
}

Q_GAIN = 1.0  # q = k = Q_GAIN * colour channels
E_TEXT = 1.0  # end-of-text marker in text channels 6, 7
EOT_GAIN = 0.1  # weight of the end-of-text marker in the text projection
CLS_CH = (8, 9)
EOT_CH = (6, 7)


def colour_code(rgb: tuple[int, int, int]) -> torch.Tensor:
    """(3,) CLIP-normalised value of a pure colour (what conv1 sees, averaged over a patch)."""
    value = torch.tensor(rgb, dtype=torch.float64)
    code = (value - torch.tensor(CLIP_MEAN, dtype=torch.float64)) / torch.tensor(
        CLIP_STD, dtype=torch.float64
    )
    return code.float()


def colour_token(rgb: tuple[int, int, int], width: int) -> torch.Tensor:
    """(width,) residual-stream token with +code in channels 0..2 and -code in 3..5."""
    out = torch.zeros(width)
    code = colour_code(rgb)
    out[0:3] = code
    out[3:6] = -code
    return out


def single_token_id(word: str, clip_model: str = CLIP_MODEL) -> int:
    """The BPE id of ``word``; raises if open_clip's tokenizer splits it."""
    tokenizer = open_clip.get_tokenizer(clip_model)
    ids = [int(t) for t in tokenizer([word])[0] if int(t) != 0]
    sot, eot = tokenizer.sot_token_id, tokenizer.eot_token_id
    if len(ids) != 3 or ids[0] != sot or ids[2] != eot:
        raise ValueError(f"{word!r} is not a single BPE token: {ids}")
    return ids[1]


def _identity_layernorm(state: dict[str, torch.Tensor], prefix: str) -> None:
    state[f"{prefix}.weight"] = torch.ones_like(state[f"{prefix}.weight"])
    state[f"{prefix}.bias"] = torch.zeros_like(state[f"{prefix}.bias"])


def _pair_projection(width: int, embed_dim: int) -> torch.Tensor:
    """(width, embed_dim): joint[i] = x[i] - x[3 + i] for i < 3."""
    proj = torch.zeros(width, embed_dim)
    for i in range(3):
        proj[i, i] = 1.0
        proj[3 + i, i] = -1.0
    return proj


def _colour_qk(width: int, heads: int) -> torch.Tensor:
    """(width, width) projection copying channels 0..5, scaled by Q_GAIN, into the first
    6 dims of every head, so all heads share one colour-matching attention map."""
    head_dim = width // heads
    w = torch.zeros(width, width)
    for h in range(heads):
        w[h * head_dim : h * head_dim + 6, :6] = Q_GAIN * torch.eye(6)
    return w


@torch.no_grad()
def planted_state_dict(clip_model: str = CLIP_MODEL) -> dict[str, torch.Tensor]:
    """Every tensor of ``clip_model`` (ViT-T-16-test or its 512-d variant), set by hand."""
    model = open_clip.create_model(clip_model, pretrained=None)
    state = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    width = model.visual.conv1.out_channels
    patch = model.visual.conv1.kernel_size[0]
    embed_dim = model.visual.proj.shape[1]
    assert width >= 10 and embed_dim >= 5, (width, embed_dim)

    # ---- image side ----
    conv = torch.zeros(width, 3, patch, patch)
    for i in range(3):
        conv[i, i] = 1.0 / (patch * patch)
        conv[3 + i, i] = -1.0 / (patch * patch)
    state["visual.conv1.weight"] = conv
    cls = torch.zeros(width)
    cls[CLS_CH[0]], cls[CLS_CH[1]] = 1.0, -1.0
    state["visual.class_embedding"] = cls
    _identity_layernorm(state, "visual.ln_pre")
    _identity_layernorm(state, "visual.ln_post")
    proj = _pair_projection(width, embed_dim)
    proj[CLS_CH[0], 4], proj[CLS_CH[1], 4] = 1.0, -1.0
    state["visual.proj"] = proj

    blocks = len(model.visual.transformer.resblocks)
    for b in range(blocks):
        p = f"visual.transformer.resblocks.{b}"
        _identity_layernorm(state, f"{p}.ln_1")
        _identity_layernorm(state, f"{p}.ln_2")
        qk = _colour_qk(width, model.visual.transformer.resblocks[b].attn.num_heads)
        state[f"{p}.attn.in_proj_weight"] = torch.cat([qk, qk, torch.eye(width)])
        if b == blocks - 1:  # block 12: the attention output is a copy of A v
            state[f"{p}.attn.out_proj.weight"] = torch.eye(width)
        # blocks 1..11: out_proj and mlp.c_proj stay zero -> z(11) = z(0)

    # ---- text side ----
    text_width = model.token_embedding.weight.shape[1]
    emb = torch.zeros_like(state["token_embedding.weight"])
    for word, rgb in COLOURS.items():
        emb[single_token_id(word, clip_model)] = colour_token(rgb, text_width)
    eot = open_clip.get_tokenizer(clip_model).eot_token_id
    emb[eot, EOT_CH[0]], emb[eot, EOT_CH[1]] = E_TEXT, -E_TEXT
    state["token_embedding.weight"] = emb
    for b in range(len(model.transformer.resblocks)):
        p = f"transformer.resblocks.{b}"
        _identity_layernorm(state, f"{p}.ln_1")
        _identity_layernorm(state, f"{p}.ln_2")
        in_proj = torch.zeros(3 * text_width, text_width)
        in_proj[2 * text_width :] = torch.eye(text_width)  # q = k = 0, v = identity
        state[f"{p}.attn.in_proj_weight"] = in_proj
        state[f"{p}.attn.out_proj.weight"] = torch.eye(text_width)
    _identity_layernorm(state, "ln_final")
    text_proj = _pair_projection(text_width, embed_dim)
    text_proj[EOT_CH[0], 3], text_proj[EOT_CH[1], 3] = EOT_GAIN, -EOT_GAIN
    state["text_projection"] = text_proj
    state["logit_scale"] = torch.tensor(np.log(100.0), dtype=torch.float32)

    expected = model.state_dict()
    assert set(state) == set(expected)
    assert all(state[k].shape == expected[k].shape for k in state)
    return state


def save_planted(path: Path, clip_model: str = CLIP_MODEL) -> Path:
    """Write ``planted_state_dict(clip_model)`` as a plain state dict (torch.save)."""
    torch.save(planted_state_dict(clip_model), path)
    return path


def register_wide_config(directory: Path) -> str:
    """Register WIDE_CLIP_MODEL: ViT-T-16-test with a 512-d joint space (for FeatUp's
    512-channel upsamplers). The JSON goes to ``directory``; open_clip keeps the config
    registered for the rest of the process."""
    base = json.loads(
        (reattn_batch.workers.backbone.MODEL_CONFIGS / f"{CLIP_MODEL}.json").read_text()
    )
    base["embed_dim"] = 512
    path = Path(directory) / f"{WIDE_CLIP_MODEL}.json"
    path.write_text(json.dumps(base))
    open_clip.add_model_config(path)
    return WIDE_CLIP_MODEL


def band_edges(width: int, names: tuple[str, ...] = ("red", "green", "blue")) -> list[int]:
    """x edges of len(names) vertical bands over ``width`` px, aligned to 16 px."""
    cells = width // 16
    n = len(names)
    edges = [round(cells * i / n) * 16 for i in range(n + 1)]
    edges[-1] = width
    return edges


def draw_bands(
    height: int, width: int, names: tuple[str, ...] = ("red", "green", "blue")
) -> np.ndarray:
    """(H, W, 3) uint8 RGB image of vertical bands of pure colours, edges on 16 px."""
    image = np.zeros((height, width, 3), dtype=np.uint8)
    edges = band_edges(width, names)
    for name, x0, x1 in zip(names, edges[:-1], edges[1:], strict=True):
        image[:, x0:x1] = COLOURS[name]
    return image


def band_masks(
    height: int, width: int, names: tuple[str, ...] = ("red", "green", "blue"), margin: int = 16
) -> dict[str, np.ndarray]:
    """(H, W) bool masks of each band, shrunk by ``margin`` px at the inner band borders."""
    edges = band_edges(width, names)
    masks = {}
    for i, (name, x0, x1) in enumerate(zip(names, edges[:-1], edges[1:], strict=True)):
        lo = x0 + margin if i > 0 else x0
        hi = x1 - margin if i < len(names) - 1 else x1
        mask = np.zeros((height, width), dtype=bool)
        mask[:, lo:hi] = True
        masks[name] = mask
    return masks


def draw_blocks(size: int = 224) -> tuple[np.ndarray, np.ndarray]:
    """A square crop with no rotational symmetry, for the crop-level checks: a red strip
    of 4 patches on the left, green above and blue below 6 patch rows on the right.

    Returns ((size, size, 3) uint8 RGB, (size/16, size/16) int patch map, 0 = red,
    1 = green, 2 = blue). A wrongly re-indexed rotated map (U_r) would pair patches of
    different colours here, which a symmetric layout (equal outer bands) could hide.
    """
    cells = size // 16
    grid = np.full((cells, cells), 2, dtype=np.int64)
    grid[: cells * 3 // 7, 4:] = 1
    grid[:, :4] = 0
    names = ("red", "green", "blue")
    palette = np.array([COLOURS[n] for n in names], dtype=np.uint8)
    image = palette[np.kron(grid, np.ones((16, 16), dtype=np.int64))]
    return image, grid


def write_png(path: Path, rgb: np.ndarray) -> Path:
    """Save an RGB uint8 image as PNG (OpenCV writes BGR)."""
    import cv2

    if not cv2.imwrite(str(path), np.ascontiguousarray(rgb[:, :, ::-1])):
        raise OSError(f"could not write {path}")
    return path
