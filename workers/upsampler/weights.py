"""The default upsampler weights: a pinned release, downloaded once into the cache folder."""

from __future__ import annotations

from pathlib import Path

from reattn_batch.workers.download import PinnedFile, fetch_pinned
from reattn_batch.workers.environment import cache_root
from reattn_batch.workers.errors import ModelError
from reattn_batch.workers.upsampler.modules import UPSAMPLER_KINDS

# SegEarth-OV's released SimFeatUp weights, pinned: the URL names a commit, not a branch,
# and the bytes must match both digests. The git blob id is the file's object id in the
# tree of that commit (read from the repository itself, `git ls-tree`). The sha256 could
# not be computed on the machines this was written on (no route to GitHub); it is the
# value published for this file at this commit by a third-party project that verifies
# it in its setup script (vistarmodels, scripts/bootstrap_segearth_ov.sh, "5.69 MB").
# A download that matches neither is refused. Change all three together.
JBU_ONE = PinnedFile(
    url=(
        "https://raw.githubusercontent.com/likyoo/SegEarth-OV/"
        "3e22a969b32c6d751bdbba64a88a0b670e630f55/"
        "simfeatup_dev/weights/xclip_jbu_one_million_aid.ckpt"
    ),
    sha256="cabc594d0042535f3413ac89d5f0b8b3173aecf18e2e469fb91b015ea4de49d8",
    git_blob="d40f00838331331faa04a926ea5991f5203f91a8",
    max_bytes=64 << 20,
)
DOWNLOAD_TIMEOUT_S = 30.0


def default_weights_path(kind: str) -> Path:
    """Where the default weights of ``kind`` are cached (whether or not they are there yet)."""
    if kind == "jbu_stack":
        raise ModelError(
            "upsampler=jbu_stack has no default weights; pass upsampler_weights=PATH "
            "(a FeatUp jbu_stack .ckpt), or use upsampler=jbu_one or upsampler=bilinear"
        )
    if kind != "jbu_one":
        raise ModelError(f"upsampler={kind!r} has no weights; choose one of {UPSAMPLER_KINDS}")
    return cache_root() / "upsampler" / JBU_ONE.filename


def default_upsampler_weights(kind: str) -> Path:
    """Path of the default weights for ``kind``, checked against their pin.

    jbu_one's file is downloaded once into the cache from a pinned revision and checked
    against pinned digests (:data:`JBU_ONE`) there and on every later call; a damaged
    cached copy is fetched again with a warning. Offline: one line naming the fix.
    """
    dest = default_weights_path(kind)
    return fetch_pinned(
        JBU_ONE,
        dest,
        what="the default SimFeatUp weights",
        fix=(
            f"pass upsampler_weights=PATH (a local copy of {JBU_ONE.filename}) "
            "or upsampler=bilinear"
        ),
        timeout=DOWNLOAD_TIMEOUT_S,
    )
