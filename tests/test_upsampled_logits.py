"""The rank-reduced SimFeatUp path equals the full 512-channel path (SPEC 2.6).

The full path (upsample every channel, normalise, dot with the queries) is the
reference; ``rank_reduced`` must give the same cosine logits within 1e-6.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_upsampler import STACK_CKPT, needs_stack_ckpt
from torch import nn

from reattn_batch.workers.backbone import load_backbone
from reattn_batch.workers.config import load_config
from reattn_batch.workers.segmenter import Segmenter
from reattn_batch.workers.upsampled_logits import full_cosines, reduced_cosines, upsampled_cosines
from reattn_batch.workers.upsampler import JBUOne, JBUStack, load_upsampler

TOL = 1e-6


def random_upsampler(kind: str, feat_dim: int = 512, seed: int = 0) -> nn.Module:
    """A seeded upsampler with non-trivial range/spatial parameters and a strong outer fixup."""
    gen = torch.Generator().manual_seed(seed)
    module = (JBUOne if kind == "jbu_one" else JBUStack)(feat_dim)
    with torch.no_grad():
        for step in module.steps():
            step.range_temp.fill_(0.8)
            step.sigma_spatial.fill_(0.5)
        conv = module.fixup_proj[1]
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * 3 / feat_dim**0.5)
        conv.bias.copy_(torch.randn(conv.bias.shape, generator=gen))
    return module.eval().requires_grad_(False)


def unit_queries(count: int, dim: int, seed: int = 1) -> torch.Tensor:
    q = torch.randn(count, dim, generator=torch.Generator().manual_seed(seed))
    return q / q.norm(dim=1, keepdim=True)


def padded_batch(batch: int, grid: tuple[int, int], seed: int = 2) -> torch.Tensor:
    """(batch, 3, 16 gh, 16 gw) guidance: a crop smaller than its padded size, zero-padded
    as the segmenter does (left = pad // 2), the last crop of the batch all zeros."""
    gen = torch.Generator().manual_seed(seed)
    h, w = 16 * grid[0] - 7, 16 * grid[1] - 12
    crops = torch.randn(batch, 3, h, w, generator=gen)
    crops[-1] = 0.0
    return F.pad(crops, (6, 6, 3, 4))


@pytest.mark.parametrize("kind", ["jbu_one", "jbu_stack"])
@pytest.mark.parametrize("grid", [(7, 7), (5, 9)])
def test_reduced_equals_full_random_upsampler(kind: str, grid: tuple[int, int]) -> None:
    ups = random_upsampler(kind)
    guidance = padded_batch(3, grid)
    source = torch.randn(3, 512, *grid, generator=torch.Generator().manual_seed(4))
    queries = unit_queries(7, 512)
    with torch.no_grad():
        want = full_cosines(ups, source, guidance, queries)
        got = reduced_cosines(ups, source, guidance, queries)
    assert got.shape == want.shape == (3, 7, 16 * grid[0], 16 * grid[1])
    assert want.abs().max() > 0.1  # not a degenerate all-zero comparison
    torch.testing.assert_close(got, want, atol=TOL, rtol=0)


@needs_stack_ckpt
def test_reduced_equals_full_real_jbu_stack() -> None:
    ups = load_upsampler("jbu_stack", STACK_CKPT)
    guidance = padded_batch(2, (10, 7), seed=5)
    source = torch.randn(2, 512, 10, 7, generator=torch.Generator().manual_seed(6))
    queries = unit_queries(6, 512, seed=7)
    with torch.no_grad():
        want = full_cosines(ups, source, guidance, queries)
        got = upsampled_cosines(ups, source, guidance, queries, "rank_reduced")
    torch.testing.assert_close(got, want, atol=TOL, rtol=0)


def test_as_many_tokens_as_channels_takes_the_full_path() -> None:
    ups = random_upsampler("jbu_stack", feat_dim=16)
    source = torch.randn(1, 16, 4, 4)
    guidance, queries = torch.randn(1, 3, 64, 64), unit_queries(3, 16)
    with torch.no_grad():
        assert torch.equal(
            upsampled_cosines(ups, source, guidance, queries, "rank_reduced"),
            full_cosines(ups, source, guidance, queries),
        )
    with pytest.raises(ValueError, match="fewer tokens"):
        reduced_cosines(ups, source, guidance, queries)


@pytest.fixture(scope="module")
def tiny_backbone():
    return load_backbone("random", "ViT-T-16-test", seed=3)


@pytest.mark.parametrize("kind", ["jbu_one", "jbu_stack"])
@pytest.mark.parametrize("lambda_cls", [-0.3, 0.0])
def test_segmenter_paths_agree(tiny_backbone, kind: str, lambda_cls: float) -> None:
    # 90x75 px crops pad to 96x80 (6x5 = 30 tokens < 64 channels of the tiny model),
    # a batch of 3 whose last crop is a zero pad crop, as the sliding window makes them.
    dim = int(tiny_backbone.visual.proj.shape[1])
    ups = random_upsampler(kind, feat_dim=dim, seed=8)
    crops = torch.randn(3, 3, 90, 75, generator=torch.Generator().manual_seed(9))
    crops[-1] = 0.0
    logits = {}
    for path in ("full", "rank_reduced"):
        cfg = load_config(
            sets=["clip_model=ViT-T-16-test", f"lambda_cls={lambda_cls}", f"upsampler_path={path}"]
        )
        seg = Segmenter(tiny_backbone, cfg, unit_queries(5, dim), upsampler=ups)
        logits[path] = seg.crop_logits(crops)
    assert logits["full"].shape == (3, 5, 90, 75)
    torch.testing.assert_close(logits["rank_reduced"], logits["full"], atol=TOL, rtol=0)
