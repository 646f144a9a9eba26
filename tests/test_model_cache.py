"""The worker model cache is keyed by weights content, not path (SPEC 3.4, issue 11 item 2).

A real Dask LocalCluster with a worker process: a weights file replaced in place at the
same path, with the same size and its old mtime put back, gives the new model.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from reattn_batch.workers import model_cache
from reattn_batch.workers.backbone import load_backbone
from reattn_batch.workers.config import load_config
from reattn_batch.workers.model_spec import ModelSpec
from reattn_batch.workers.segmenter import Segmenter

TINY = "ViT-T-16-test"


def write_weights(path: Path, seed: int) -> None:
    torch.save(load_backbone("random", TINY, seed).model.state_dict(), path)


def fixed_inputs() -> tuple[np.ndarray, torch.Tensor]:
    """(Q, D) unit queries and one (1, 3, 224, 224) normalised crop, seeded."""
    gen = torch.Generator().manual_seed(7)
    queries = torch.randn(3, 64, generator=gen)
    queries = queries / queries.norm(dim=1, keepdim=True)
    return queries.numpy(), torch.randn(1, 3, 224, 224, generator=gen)


def spec_for(path: Path) -> ModelSpec:
    cfg = load_config(sets=[f"clip_model={TINY}", "method=segearth-ov"])
    return ModelSpec(str(path), "bilinear", None, cfg, device="cpu")


def logits_on_worker(spec: ModelSpec) -> tuple[np.ndarray, int, int, int]:
    """Runs on the worker: logits of the cached segmenter, loads so far, models held, pid."""
    queries, crop = fixed_inputs()
    logits = model_cache.segmenter_for(spec, queries).crop_logits(crop)
    held = len(model_cache._parts)  # noqa: SLF001 (the old model must be dropped)
    return logits.numpy(), model_cache.load_count(spec.fingerprint), held, os.getpid()


def logits_fresh(path: Path) -> np.ndarray:
    """The same logits from a model loaded here from ``path``, outside any cache."""
    queries, crop = fixed_inputs()
    spec = spec_for(path)
    segmenter = Segmenter(
        load_backbone(str(path), TINY, spec.cfg.random_seed), spec.cfg, torch.from_numpy(queries)
    )
    return segmenter.crop_logits(crop).numpy()


@pytest.mark.timeout(300)
def test_replaced_weights_file_gives_a_new_model_on_a_live_worker(tmp_path: Path) -> None:
    distributed = pytest.importorskip("distributed")
    path, other = tmp_path / "weights.pt", tmp_path / "other" / "weights.pt"
    other.parent.mkdir()
    write_weights(path, seed=1)
    write_weights(other, seed=2)
    first, second = path.read_bytes(), other.read_bytes()
    assert len(first) == len(second) and first != second  # same size, other content
    want_first, want_second = logits_fresh(path), logits_fresh(other)
    assert not np.allclose(want_first, want_second, atol=1e-3)

    spec = spec_for(path)
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):

        def run() -> tuple[np.ndarray, int, int, int]:
            return client.submit(logits_on_worker, spec, pure=False).result(timeout=240)

        got, loads, held, pid = run()
        assert pid != os.getpid()  # a real worker process
        np.testing.assert_allclose(got, want_first, rtol=1e-5, atol=1e-5)
        assert (loads, held) == (1, 1)
        got, loads, _, _ = run()  # unchanged file: the cached model, no reload
        np.testing.assert_allclose(got, want_first, rtol=1e-5, atol=1e-5)
        assert loads == 1

        # replace the content in place (same inode, same size), then put the old mtime back
        before = path.stat()
        with open(path, "r+b") as f:
            f.write(second)
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        after = path.stat()
        assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
            before.st_ino,
            before.st_size,
            before.st_mtime_ns,
        )

        got, loads, held, pid_after = run()
        assert pid_after == pid  # the same live worker
        np.testing.assert_allclose(got, want_second, rtol=1e-5, atol=1e-5)
        assert (loads, held) == (2, 1)  # loaded again; the old model was dropped

        # replaced by a rename (what cp/rsync/download tools do): a new model again
        (tmp_path / "next.pt").write_bytes(first)
        os.replace(tmp_path / "next.pt", path)
        got, loads, held, _ = run()
        np.testing.assert_allclose(got, want_first, rtol=1e-5, atol=1e-5)
        assert (loads, held) == (3, 1)
