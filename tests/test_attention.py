"""ReAttnCLIP's A_refine and the base methods (SPEC 2.2, 2.3) on a tiny random CLIP."""

from __future__ import annotations

import pytest
import torch

from reattn_batch.workers.attention import ReAttnParts, refine_attention
from reattn_batch.workers.backbone import load_backbone
from reattn_batch.workers.config import BASES, load_config
from reattn_batch.workers.encoder import encode_crops
from reattn_batch.workers.methods import BASE_METHODS
from reattn_batch.workers.rotation import rotate, to_ground_order, unrotate_order
from reattn_batch.workers.segmenter import build_method
from reattn_batch.workers.vit import qkv, run_trunk

TINY = "clip_model=ViT-T-16-test"


@pytest.fixture(scope="module")
def backbone():
    return load_backbone("random", "ViT-T-16-test", seed=3)


@pytest.fixture(scope="module")
def crops():
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("base", BASES)
def test_reattn_with_every_switch_on_base_is_its_base_exactly(backbone, crops, base):
    plain = load_config(sets=[TINY], overrides={"method": base})
    switched_off = load_config(
        sets=[TINY, "patch_patch=base", "cls_row=base", "cls_col=keep", f"base={base}"],
        overrides={"method": "reattnclip"},
    )
    want = encode_crops(backbone, plain, crops)
    got = encode_crops(backbone, switched_off, crops)
    assert torch.equal(got.patches, want.patches)
    assert torch.equal(got.cls, want.cls)
    # and the switches do change the output when on
    on = encode_crops(backbone, switched_off.replace(patch_patch="reattn"), crops)
    assert not torch.allclose(on.patches, want.patches)


@pytest.mark.parametrize("cls_col, independent", [("zero", True), ("keep", False)])
def test_zero_cls_column_makes_patches_independent_of_the_cls_value(
    backbone, crops, cls_col, independent
):
    cfg = load_config(sets=[TINY, f"cls_col={cls_col}", "cls_row=base"])
    method = build_method(cfg)
    ground, passes = method.trunk_passes(backbone.visual, crops)
    parts = method.parts(backbone.visual, ground, passes, (14, 14))
    z11 = ground.z[11]
    changed = z11.clone()
    changed[:, 0] += 5.0 * torch.randn_like(
        changed[:, 0]
    )  # a different [CLS] token -> different v_0
    block = backbone.visual.transformer.resblocks[-1]
    a = method.final_block(block, z11, parts)
    b = method.final_block(block, changed, parts)
    assert torch.equal(a[:, 1:], b[:, 1:]) is independent
    assert not torch.equal(a[:, 0], b[:, 0])  # the [CLS] output itself does see it


def test_segearth_rows_sum_to_three_and_maskclip_is_identity(backbone, crops):
    trunk = run_trunk(backbone.visual, crops)
    q, k, v = qkv(backbone.visual.transformer.resblocks[-1].attn, trunk.z[11])
    a = BASE_METHODS["segearth-ov"]().attention(q, k, v)
    assert a.shape == (2, 4, 197, 197)
    torch.testing.assert_close(a.sum(-1), torch.full((2, 4, 197), 3.0))
    assert BASE_METHODS["maskclip"]().attention(q, k, v) is None
    torch.testing.assert_close(
        BASE_METHODS["sclip"]().attention(q, k, v).sum(-1), torch.full((2, 4, 197), 2.0)
    )


def test_refined_attention_layout_against_hand_computed_parts(backbone, crops):
    cfg = load_config(sets=[TINY])
    method = build_method(cfg)
    ground, passes = method.trunk_passes(backbone.visual, crops)
    parts = method.parts(backbone.visual, ground, passes, (14, 14))
    a = refine_attention(None, parts, 197)
    assert a.shape == (2, 1, 197, 197)  # shared by all heads
    # [CLS] row: mean of the head-averaged q.k rows of blocks 6..9, over all 197 tokens
    trunk = run_trunk(backbone.visual, crops, attn_layers={6, 7, 8, 9})
    want_row = sum(trunk.attn[layer][:, 0] for layer in (6, 7, 8, 9)) / 4
    torch.testing.assert_close(a[:, 0, 0], want_row)
    assert torch.all(a[:, 0, 1:, 0] == 0)
    # row sums of S: alpha * sum(lambda_r) + sum_l beta_l * (1 - P_l(i, 0))
    fuse = run_trunk(backbone.visual, crops, attn_layers={9, 10, 11})
    beta = (1 - 0.2) / 3
    want = 0.2 * 2.2 + sum(beta * (1 - fuse.attn[layer][:, 1:, 0]) for layer in (9, 10, 11))
    torch.testing.assert_close(a[:, 0, 1:, 1:].sum(-1), want)


def test_s_rot_is_rotation_invariant_for_rotation_symmetric_weights(backbone):
    """Rotating the input only permutes which pass sees which view: with all four
    rotations weighted equally, S_rot of a crop equals S_rot of its rotated copy, once
    re-indexed to ground order. A wrong U_r breaks this."""
    cfg = load_config(sets=[TINY, "rotation_weights=[1,1,1,1]"])
    crop = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(5))
    turned = rotate(crop, 90)
    method = build_method(cfg.replace(alpha=1.0))
    s = {}
    for name, x in (("ground", crop), ("turned", turned)):
        ground, passes = method.trunk_passes(backbone.visual, x)
        s[name] = method.parts(backbone.visual, ground, passes, (14, 14)).patch_patch
    # patch i of `turned` (row-major) shows ground patch m[i] of `crop`
    m = rotate(torch.arange(196).reshape(14, 14), 90).reshape(-1)
    torch.testing.assert_close(s["turned"][0], s["ground"][0][m][:, m], atol=1e-5, rtol=1e-4)
    # U_r is the inverse of that map
    assert torch.equal(m[unrotate_order(14, 14, 90)], torch.arange(196))


@pytest.mark.parametrize("degrees", [0, 90, 180, 270])
@pytest.mark.parametrize("grid", [(14, 14), (3, 5)])
def test_rotation_reindexing_maps_every_ground_patch_to_itself(degrees, grid):
    gh, gw = grid
    # an image whose 16x16 patch (i, j) is filled with its ground index
    ids = torch.arange(gh * gw, dtype=torch.float32).reshape(gh, gw)
    image = ids.repeat_interleave(16, 0).repeat_interleave(16, 1)[None]
    turned = rotate(image, degrees)
    # read the rotated crop's patches in its own row-major order, as the ViT tokenises it
    tokens = turned[0, ::16, ::16].reshape(1, -1, 1)
    back = to_ground_order(tokens, gh, gw, degrees)
    assert torch.equal(back.reshape(-1), torch.arange(gh * gw, dtype=torch.float32))


def test_parts_identity_and_replacement_flags():
    s = torch.rand(1, 4, 4)
    row = torch.rand(1, 5)
    assert ReAttnParts(None, None, False).is_identity
    assert ReAttnParts(s, row, True).replaces_all
    base = torch.rand(1, 2, 5, 5)
    assert refine_attention(base, ReAttnParts(None, None, False), 5) is base
    kept = refine_attention(base, ReAttnParts(s, None, False), 5)
    assert torch.equal(kept[:, :, 0], base[:, :, 0]) and torch.equal(
        kept[:, :, 1:, 0], base[:, :, 1:, 0]
    )
    assert torch.equal(kept[0, 1, 1:, 1:], s[0])
