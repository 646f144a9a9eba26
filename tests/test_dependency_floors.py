"""pyproject.toml's floors match what the code needs (issue 11, item 7)."""

from __future__ import annotations

import tomllib
from importlib.metadata import version
from pathlib import Path

import open_clip
import pytest
from packaging.requirements import Requirement

from reattn_batch.workers.backbone import load_backbone

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def requirement(name: str) -> Requirement:
    deps = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    return next(r for r in map(Requirement, deps) if r.name == name)


@pytest.mark.parametrize(
    ("name", "refused", "allowed"),
    [
        # CVE-2025-32434: torch.load(weights_only=True) runs code in torch <= 2.5.1
        ("torch", ["2.2.0", "2.5.1"], ["2.6.0", "2.14.1"]),
        # blocks take (B, T, C) from 2.26; OpenAI weights pinned on the HF hub from 2.29
        ("open_clip_torch", ["2.24.0", "2.28.0"], ["2.29.0", "3.3.0"]),
        ("numpy", ["1.25.2"], ["1.26.4", "2.4.6"]),
        # LocalStore writes chunk files atomically (temp + rename) from 3.1.3 (zarr #3412):
        # store/records.py relies on it for torn-free records and data chunks
        ("zarr", ["3.0.8", "3.1.2"], ["3.1.3", "3.1.6"]),
    ],
)
def test_floors(name: str, refused: list[str], allowed: list[str]) -> None:
    req = requirement(name)
    assert not any(req.specifier.contains(v) for v in refused), req
    assert all(req.specifier.contains(v) for v in allowed), req
    assert req.specifier.contains(version(name)), f"installed {name} {version(name)} vs {req}"


def test_installed_open_clip_has_what_the_floor_promises() -> None:
    """What the open_clip floor is for: batch-first ViT blocks and OpenAI's hf_hub entry."""
    model = load_backbone("random", "ViT-T-16-test").model
    assert all(b.attn.batch_first for b in model.visual.transformer.resblocks)
    assert open_clip.get_pretrained_cfg("ViT-B-16", "openai").get("hf_hub")
