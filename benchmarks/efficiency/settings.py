"""Defaults per device, what the block profile times, and the command line."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from reattn_batch.workers.config import METHODS
from reattn_batch.workers.errors import UserError

DESCRIPTION = (
    "Efficiency of the scene job (`reattn_batch.run.spine.run_scene`) against the model alone."
)

SOURCE = Path(__file__).resolve().parents[3] / "shared/data/rasters/oem_koeln_50.tif"
DEFAULT_CLASSES = "building,road,water,tree"
HALO_BLOCKS = (1024, 2048, 4096)
HALO_SIZES = (64.0, 400.0)
MOSAIC_TILE = 512
WARMUP_SIDE = 512  # px: the warm-up scene (one block), or the smallest mosaic if smaller
PLAIN_CALLS = {"cpu": 4, "cuda": 50}  # model calls per side of the worker vs plain check

# Defaults that depend on the device. On the CPU the 4 MP mosaic is 4 blocks of 1024
# (a scene of one block says nothing about memory against scene size) and the model is
# the tiny test architecture, so that the default run takes minutes on 2 cores.
DEFAULTS = {
    "cpu": {
        "sizes": "1,4",
        "block_size": 1024,
        "clip_model": "ViT-T-16-test",
        "upsampler": "bilinear",
    },
    "cuda": {
        "sizes": "4,64",
        "block_size": "auto",
        "clip_model": "ViT-B-16-quickgelu",
        "upsampler": "jbu_one",
    },
}

# What the block profile times inside run_block: (label, module, attribute). A missing
# attribute is skipped, so the profile follows the block task as it changes.
PROFILE_TARGETS = (
    ("model cache lookup", "reattn_batch.blocks.task", "segmenter_for"),
    ("started record (zarr)", "reattn_batch.blocks.task", "store.mark_block_started"),
    ("read window (GDAL)", "reattn_batch.blocks.reading", "read_window"),
    ("resample image to model grid", "reattn_batch.grid.resample", "Resampler.bilinear"),
    ("resample mask (nearest)", "reattn_batch.grid.resample", "Resampler.nearest"),
    ("normalise", "reattn_batch.blocks.reading", "normalise_chw"),
    ("wait for pixel rows", "reattn_batch.blocks.reading", "BlockInput.wait_rows"),
    ("stack crops, pad, sum logits", "reattn_batch.blocks.task", "accumulate_logits"),
    ("labels (softmax, argmax)", "reattn_batch.blocks.task", "labels_from_logits"),
    ("write labels (zarr)", "reattn_batch.blocks.task", "store.write_block"),
    ("done record (zarr)", "reattn_batch.blocks.task", "store.mark_block_done"),
)
MODEL_LABEL = "model (crop_logits)"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    cpu, cuda = DEFAULTS["cpu"], DEFAULTS["cuda"]
    p = argparse.ArgumentParser(description=DESCRIPTION)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument(
        "--sizes",
        default=None,
        help=f"mosaic sizes in megapixels, comma-separated (default {cpu['sizes']} on CPU, "
        f"{cuda['sizes']} on CUDA)",
    )
    p.add_argument(
        "--block-size",
        type=int,
        default=None,
        help=f"the job's block size in native px (default {cpu['block_size']} on CPU, "
        f"{cuda['block_size']} = the job's default on CUDA)",
    )
    p.add_argument(
        "--clip-model",
        default=None,
        help=f"open_clip architecture (default {cpu['clip_model']} on CPU, "
        f"{cuda['clip_model']} on CUDA)",
    )
    p.add_argument(
        "--method", choices=METHODS, default=None, help="(default: configs/method.yaml's)"
    )
    p.add_argument(
        "--upsampler",
        choices=("bilinear", "jbu_one", "jbu_stack"),
        default=None,
        help=f"(default {cpu['upsampler']} on CPU, {cuda['upsampler']} on CUDA; jbu_* need "
        "a 512-d CLIP such as ViT-B/16)",
    )
    p.add_argument(
        "--upsampler-weights",
        default=None,
        metavar="CKPT",
        help="a SimFeatUp/FeatUp .ckpt; without it jbu_one/jbu_stack get a seeded random "
        "init, saved as a checkpoint in the work directory",
    )
    p.add_argument("--batch-size", type=int, default=None, help="(default: the config's)")
    p.add_argument(
        "--dtype",
        choices=("auto", "fp32", "fp16", "bf16"),
        default="auto",
        help="autocast dtype on CUDA (auto = fp16); the CPU runs fp32",
    )
    p.add_argument(
        "--gsd",
        type=float,
        default=None,
        help="model resolution in metres (the mosaics are 0.5 m; default: native, no resampling)",
    )
    p.add_argument("--classes", default=DEFAULT_CLASSES, help=f"(default {DEFAULT_CLASSES})")
    p.add_argument("--workers", type=int, default=None, help="LocalCluster workers")
    p.add_argument("--threads-per-worker", type=int, default=None)
    p.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDR",
        help="use this running Dask scheduler instead of a LocalCluster (worker memory is "
        "sampled only for workers on this host)",
    )
    p.add_argument("--source", default=str(SOURCE), help="raster the mosaics are tiled from")
    p.add_argument(
        "--workdir", default=None, help="keep mosaics and stores here (default: a temp dir)"
    )
    p.add_argument("--sample-interval", type=float, default=0.05, help="memory sampling, seconds")
    p.add_argument("--no-profile", action="store_true", help="skip the block-task profile")
    p.add_argument(
        "--no-plain-check", action="store_true", help="skip the worker vs plain process check"
    )
    p.add_argument(
        "--omp-wait-policy",
        choices=("passive", "default"),
        default=None,
        help="passive: start the LocalCluster's workers with OMP_WAIT_POLICY=PASSIVE (default "
        "on CPU, unless the environment sets it); default: leave it to libgomp",
    )
    p.add_argument("--json", default=None, metavar="OUT", help="write every figure to OUT")
    p.add_argument("-v", "--verbose", action="store_true", help="show the job's log lines")
    return p.parse_args(argv)


def parse_sizes(text: str) -> list[float]:
    try:
        values = sorted({float(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise UserError(f"--sizes {text!r}: expected comma-separated megapixels") from None
    if not values or any(v <= 0 for v in values):
        raise UserError(f"--sizes {text!r}: expected positive megapixels")
    return values


def mp_text(value: float) -> str:
    return f"{value:g} MP"


def load_average() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
