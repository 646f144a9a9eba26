"""batch_size: auto (workers/batching.py) and its config round trip."""

from __future__ import annotations

import pytest
import torch

from reattn_batch.workers.batching import (
    CUDA_BATCH_CAP,
    crop_bytes,
    cuda_batch_size,
    resolve_batch_size,
)
from reattn_batch.workers.config import AUTO_BATCH, load_config
from reattn_batch.workers.errors import UserError


def test_auto_is_the_default_and_round_trips() -> None:
    cfg = load_config()
    assert cfg.batch_size == AUTO_BATCH and cfg.as_dict()["batch_size"] == "auto"
    assert cfg.replace(alpha=0.3).batch_size == AUTO_BATCH
    assert load_config(sets=["batch_size=3"]).as_dict()["batch_size"] == 3
    for bad in ("batch_size=0", "batch_size=-2", "batch_size=many", "batch_size=true"):
        with pytest.raises(UserError, match="batch_size"):
            load_config(sets=[bad])


def test_cpu_auto_is_one_and_numbers_win() -> None:
    cpu = torch.device("cpu")
    assert resolve_batch_size(cpu, load_config(), 6, True) == 1
    assert resolve_batch_size(cpu, load_config(sets=["batch_size=5"]), 6, True) == 5


def test_cuda_batch_is_the_largest_fitting_power_of_two() -> None:
    assert cuda_batch_size(10 * 2**30, 2**30) == 8  # 10 fit -> 8
    assert cuda_batch_size(2**40, 2**20) == CUDA_BATCH_CAP
    assert cuda_batch_size(2**20, 2**30) == 1  # nothing fits: still one crop
    reduced, full = load_config(), load_config(sets=["upsampler_path=full"])
    assert crop_bytes(reduced, 6, True) < crop_bytes(full, 6, True)
    reattn, seg = load_config(), load_config(overrides={"method": "segearth-ov"})
    assert crop_bytes(seg, 6, False) < crop_bytes(reattn, 6, False)
