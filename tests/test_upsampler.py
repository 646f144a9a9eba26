"""Tests for workers/upsampler/: SimFeatUp / FeatUp joint bilateral upsamplers (SPEC 2.6)."""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import reattn_batch.workers.upsampler as up
import reattn_batch.workers.upsampler.conv as conv
import reattn_batch.workers.upsampler.weights as weights
from reattn_batch.workers.download import PinnedFile
from reattn_batch.workers.errors import UserError
from reattn_batch.workers.upsampler import (
    JBUOne,
    JBUStack,
    JointBilateralStep,
    adaptive_conv,
    default_upsampler_weights,
    load_upsampler,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
STACK_CKPT = DATA / "weights" / "featup_clip_jbu_stack_cocostuff.ckpt"
needs_stack_ckpt = pytest.mark.skipif(
    not STACK_CKPT.is_file(), reason=f"real FeatUp checkpoint not found at {STACK_CKPT}"
)


def test_adaptive_conv_matches_naive_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    # The eager tap loop (the CPU default) with channels that cross its channel chunk
    # boundary with a remainder, against a per-pixel loop written out here.
    monkeypatch.setenv(conv.FUSED_CONV_ENV, "off")
    assert not conv.fused_conv_wanted(torch.device("cpu"))
    torch.manual_seed(0)
    b, c, h, w, r = 2, conv.CPU_CHANNEL_CHUNK + 3, 5, 5, 2
    assert c // conv.CPU_CHANNEL_CHUNK == 1 and c % conv.CPU_CHANNEL_CHUNK == 3
    d = 2 * r + 1
    src = torch.randn(b, c, h + 2 * r, w + 2 * r, dtype=torch.float64)
    kernel = torch.randn(b, h, w, d, d, dtype=torch.float64)
    expected = torch.zeros(b, c, h, w, dtype=torch.float64)
    for bi in range(b):
        for y in range(h):
            for x in range(w):
                window = src[bi, :, y : y + d, x : x + d]  # (C, D, D)
                expected[bi, :, y, x] = (window * kernel[bi, y, x]).sum((1, 2))
    torch.testing.assert_close(adaptive_conv(src, kernel), expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(conv.tap_loop(src, kernel), expected, atol=1e-6, rtol=0)
    with pytest.raises(ValueError):
        adaptive_conv(src[..., 1:], kernel)


@pytest.mark.parametrize(
    "h, w, big_h, big_w, pad",
    [(14, 14, 28, 28, 3), (112, 112, 224, 224, 3), (7, 10, 14, 20, 5), (3, 5, 6, 10, 1)],
)
def test_bicubic_reflect_padded_equals_interpolate_then_pad(h, w, big_h, big_w, pad) -> None:
    """The separable-matrix resize equals torch's bicubic (align_corners=False, edge
    clamped) followed by reflect padding, including non-square maps and the borders."""
    src = torch.randn(2, 5, h, w, generator=torch.Generator().manual_seed(h + w))
    resized = F.interpolate(src, size=(big_h, big_w), mode="bicubic", align_corners=False)
    expected = F.pad(resized, [pad] * 4, mode="reflect")
    out = up.bicubic_reflect_padded(src, (big_h, big_w), pad)
    torch.testing.assert_close(out, expected, atol=2e-6, rtol=0)


def test_range_kernel_planted_neighbour_gives_row_major_tap() -> None:
    r, dy, dx = 5, -1, 2
    step = JointBilateralStep(radius=r).eval()
    step.range_proj = nn.Identity()  # logits become plain dot products of guidance pixels
    with torch.no_grad():
        step.range_temp.fill_(2.0)
    g = torch.zeros(1, 3, 16, 16)
    cy, cx = 8, 6
    v = torch.tensor([1.0, -2.0, 0.5])
    g[0, :, cy, cx] = v
    g[0, :, cy + dy, cx + dx] = 2 * v  # <2v, v> beats the centre's own <v, v>
    with torch.no_grad():
        kernel = step.range_kernel(g)
    d = 2 * r + 1
    assert kernel.shape == (1, d * d, 16, 16)
    tap = int(kernel[0, :, cy, cx].argmax())
    assert tap == (dy + r) * d + (dx + r)  # transposed order would give (dx + r) * d + (dy + r)
    torch.testing.assert_close(kernel.sum(1), torch.ones(1, 16, 16))


def test_step_kernel_matches_unfold_reference() -> None:
    torch.manual_seed(1)
    r = 3
    d = 2 * r + 1
    step = JointBilateralStep(radius=r).eval()
    with torch.no_grad():
        step.range_temp.fill_(0.7)
        step.sigma_spatial.fill_(0.6)
    g = torch.randn(2, 3, 12, 10)
    src = torch.randn(2, 5, 6, 5)
    with torch.no_grad():
        proj = step.range_proj(g)
        nb = nn.Unfold(d)(F.pad(proj, [r] * 4, mode="reflect")).view(2, 32, d * d, 12, 10)
        rng = torch.softmax(math.exp(0.7) * (nb * proj[:, :, None]).sum(1), dim=1)
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, d), torch.linspace(-1, 1, d), indexing="ij")
        spatial = torch.exp(-(yy**2 + xx**2) / (2 * 0.6**2)).reshape(1, -1, 1, 1)
        k = rng * spatial
        k = k / k.sum(1, keepdim=True)
        k = k + 0.1 * step.fixup_proj(torch.cat([k, g], 1))
        hr = F.interpolate(src, size=(12, 10), mode="bicubic", align_corners=False)
        patches = nn.Unfold(d)(F.pad(hr, [r] * 4, mode="reflect")).view(2, 5, d * d, 12, 10)
        expected = (patches * k[:, None]).sum(2)
        torch.testing.assert_close(step.kernel(g), k, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(step(src, g), expected, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def stack() -> nn.Module:
    if not STACK_CKPT.is_file():
        pytest.skip(f"real FeatUp checkpoint not found at {STACK_CKPT}")
    module = load_upsampler("jbu_stack", STACK_CKPT)
    assert isinstance(module, JBUStack)
    return module


def _vertical_edge_guidance(edge: int) -> torch.Tensor:
    g = torch.full((1, 3, 112, 112), -1.0)
    g[..., edge:] = 1.0
    return g


@needs_stack_ckpt
def test_real_jbu_stack_loads_and_runs(stack: nn.Module) -> None:
    assert not stack.training
    assert all(not p.requires_grad for p in stack.parameters())
    assert sum(p.numel() for p in stack.parameters()) == 287_588
    torch.manual_seed(0)
    with torch.no_grad():
        out = stack(torch.randn(1, 512, 14, 14), torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 512, 224, 224)
    assert torch.isfinite(out).all()


@needs_stack_ckpt
def test_real_jbu_stack_keeps_constant_source_nearly_constant(stack: nn.Module) -> None:
    # Kernels are normalised (sum 1 up to the 0.1 * fixup term), so a constant feature map
    # stays nearly constant while a random one keeps its spatial variation.
    torch.manual_seed(0)
    g = 1.5 * F.interpolate(torch.randn(1, 3, 14, 14), (112, 112), mode="bilinear")
    c = torch.randn(1, 512, 1, 1)
    with torch.no_grad():
        const_std = stack(c.expand(1, 512, 7, 7), g).std(dim=(2, 3)).mean()
        rand_std = stack(torch.randn(1, 512, 7, 7), g).std(dim=(2, 3)).mean()
    assert const_std < 0.1 * rand_std

    # Without the inner fixups the kernels sum to exactly 1: out == c + 0.1 * fixup(c).
    exact = JBUStack()
    exact.load_state_dict(stack.state_dict())
    exact.eval()
    with torch.no_grad():
        for step in exact.steps():
            step.fixup_proj[3].weight.zero_()
            step.fixup_proj[3].bias.zero_()
        out = exact(c.expand(1, 512, 7, 7), g)
        expected = (c + 0.1 * exact.fixup_proj(c)).expand_as(out)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)


@needs_stack_ckpt
def test_real_jbu_stack_snaps_feature_edge_to_guidance_edge(stack: nn.Module) -> None:
    # Low-res 7x7 features of a two-region scene (patch 3 is half/half) and the guidance
    # edge at column 56 of the 112x112 crop: the real weights put a sharp jump exactly at
    # the guidance edge, where bicubic upsampling has a ramp of small steps.
    torch.manual_seed(0)
    edge = 56
    left, right = torch.randn(1, 512, 1, 1), torch.randn(1, 512, 1, 1)
    ideal = (torch.arange(112) >= edge).float().expand(1, 1, 112, 112)
    frac = F.adaptive_avg_pool2d(ideal, (7, 7))  # fraction of "right" per patch
    src = (1 - frac) * left + frac * right
    with torch.no_grad():
        out = stack(src, _vertical_edge_guidance(edge))
        pl, pr = (v + 0.1 * stack.fixup_proj(v) for v in (left, right))
        bicubic = F.interpolate(src, size=(112, 112), mode="bicubic", align_corners=False)
        bicubic = bicubic + 0.1 * stack.fixup_proj(bicubic)

    def right_fraction(x: torch.Tensor) -> torch.Tensor:  # (112,) per column
        return (((x - pl) * (pr - pl)).sum(1) / ((pr - pl) ** 2).sum(1))[0].mean(0)

    jumps = right_fraction(out).diff()
    assert int(jumps.argmax()) + 1 == edge
    assert jumps.max() > 0.3
    assert right_fraction(bicubic).diff().max() < 0.1


def _user_error(call: Callable[[], object]) -> str:
    with pytest.raises(UserError) as e:
        call()
    msg = str(e.value)
    assert msg and "\n" not in msg
    return msg


@needs_stack_ckpt
def test_load_errors_are_one_line_user_errors(tmp_path: Path) -> None:
    msg = _user_error(lambda: load_upsampler("jbu_one", STACK_CKPT))
    assert "jbu_stack weights" in msg and "upsampler=jbu_stack" in msg and str(STACK_CKPT) in msg

    missing = tmp_path / "nope.ckpt"
    assert str(missing) in _user_error(lambda: load_upsampler("jbu_stack", missing))

    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(random.Random(0).randbytes(4096))
    assert str(junk) in _user_error(lambda: load_upsampler("jbu_stack", junk))

    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"model.w": torch.zeros(3)}}, other)
    assert "upsampler." in _user_error(lambda: load_upsampler("jbu_stack", other))

    assert "feat_dim 256" in _user_error(lambda: load_upsampler("jbu_stack", STACK_CKPT, 256))
    assert "unknown upsampler=" in _user_error(lambda: load_upsampler("carafe", STACK_CKPT))


def test_bilinear_has_no_module() -> None:
    assert load_upsampler("bilinear", None) is None


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_default_weights_offline_and_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REATTN_BATCH_CACHE", str(tmp_path))
    monkeypatch.setattr(weights, "JBU_ONE", PinnedFile("http://127.0.0.1:9/x.ckpt", sha256(b"x")))
    monkeypatch.setattr(weights, "DOWNLOAD_TIMEOUT_S", 2.0)
    with pytest.raises(UserError) as e:
        default_upsampler_weights("jbu_one")
    msg = str(e.value)
    assert "upsampler_weights=" in msg and "http://127.0.0.1:9/x.ckpt" in msg and "\n" not in msg
    assert not list((tmp_path / "upsampler").glob("*"))  # no partial file left behind

    with pytest.raises(UserError, match="upsampler_weights"):
        default_upsampler_weights("jbu_stack")

    cached = tmp_path / "upsampler" / "x.ckpt"
    cached.write_bytes(b"x")  # the pinned content; nobody listens on port 9, so a
    # download would fail: success means the checked cache was used
    assert default_upsampler_weights("jbu_one") == cached


def test_jbu_one_checkpoint_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = JBUOne(feat_dim=64).eval()
    with torch.no_grad():  # non-trivial range/spatial parameters
        model.up.range_temp.fill_(1.3)
        model.up.sigma_spatial.fill_(0.4)
    ckpt = tmp_path / "jbu_one.ckpt"
    state = {"upsampler." + k: v for k, v in model.state_dict().items()}
    torch.save({"epoch": 3, "state_dict": {**state, "model.backbone.w": torch.ones(2)}}, ckpt)

    loaded = load_upsampler("jbu_one", ckpt, feat_dim=64)
    assert isinstance(loaded, JBUOne) and not loaded.training
    assert all(not p.requires_grad for p in loaded.parameters())
    src, g = torch.randn(2, 64, 3, 4), torch.randn(2, 3, 48, 64)
    with torch.no_grad():
        out = loaded(src, g)
        assert out.shape == (2, 64, 48, 64)
        assert torch.equal(out, model(src, g))
        # four applications of the one step, each guided by the crop avg-pooled to its size
        x = src
        for size in [(6, 8), (12, 16), (24, 32), (48, 64)]:
            x = model.up(x, F.adaptive_avg_pool2d(g, size))
        torch.testing.assert_close(out, x + 0.1 * model.fixup_proj(x))

    with pytest.raises(UserError, match="jbu_one weights"):
        load_upsampler("jbu_stack", ckpt, feat_dim=64)

    # weights=None takes the cached default (when it matches its pin) without the network
    monkeypatch.setenv("REATTN_BATCH_CACHE", str(tmp_path / "cache"))
    pin = PinnedFile("http://127.0.0.1:9/w.ckpt", sha256(ckpt.read_bytes()))  # no listener
    monkeypatch.setattr(weights, "JBU_ONE", pin)
    (tmp_path / "cache" / "upsampler").mkdir(parents=True)
    (tmp_path / "cache" / "upsampler" / "w.ckpt").write_bytes(ckpt.read_bytes())
    assert isinstance(load_upsampler("jbu_one", None, feat_dim=64), JBUOne)


@pytest.mark.parametrize("radius", [3, 5])
def test_fused_adaptive_conv_equals_tap_loop(radius: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # The compiled one-pass kernel against the eager tap-by-tap loop, for jbu_stack's and
    # jbu_one's radii, with channels that cross the CPU loop's channel chunk boundary.
    monkeypatch.setenv(conv.FUSED_CONV_ENV, "on")
    monkeypatch.setattr(conv, "_fused_state", {})
    torch.manual_seed(radius)
    d = 2 * radius + 1
    src = torch.randn(2, conv.CPU_CHANNEL_CHUNK + 3, 12 + 2 * radius, 9 + 2 * radius)
    kernel = torch.randn(2, 12, 9, d, d)
    fused = conv._fused_conv(src, kernel)
    if fused is None:
        pytest.skip(f"no working torch.compile here: {conv._fused_state['failed']}")
    torch.testing.assert_close(fused, conv.tap_loop(src, kernel), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(adaptive_conv(src, kernel), fused, atol=0, rtol=0)


def test_fused_conv_mode_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(conv.FUSED_CONV_ENV, "auto")
    assert not conv.fused_conv_wanted(torch.device("cpu"))
    assert conv.fused_conv_wanted(torch.device("cuda"))
    monkeypatch.setenv(conv.FUSED_CONV_ENV, "maybe")
    assert conv.FUSED_CONV_ENV in _user_error(lambda: conv.fused_conv_wanted(torch.device("cpu")))
