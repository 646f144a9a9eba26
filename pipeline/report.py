"""``--report FILE``: what a `segment`, `run` or `eval` spent its time on, as JSON.

Keys (issue 9 item 5):

- ``seconds``: ``load`` (reading input and loading the model), ``text`` (text
  embeddings), ``model`` (turning pixels into logits: the crop forward passes, CUDA
  synchronised), ``write`` (outputs), ``total`` (wall time of the command); for `run`
  the per-task parts are summed over block tasks (``seconds_are`` says so) while
  ``total`` is wall time;
- ``crops_run``: crops through the model (halo duplicates included; padding not);
- ``device``, ``dtype`` (fp32, fp16 or bf16: what the crops ran in), ``batch_size``
  (the resolved number of crops per forward pass);
- `run` only: ``crops_in_scene`` (crops of the global grid that hold data, each once)
  and ``blocks``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

PHASES = ("load", "text", "model", "write")


@dataclasses.dataclass
class Clock:
    """Seconds per phase, added up; ``total`` is measured from construction."""

    seconds: dict[str, float] = dataclasses.field(
        default_factory=lambda: dict.fromkeys(PHASES, 0.0)
    )
    start: float = dataclasses.field(default_factory=time.perf_counter)
    #: the report's other keys (crops_run, device, ...), filled in by the command's core
    facts: dict[str, Any] = dataclasses.field(default_factory=dict)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        begin = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - begin)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def totals(self) -> dict[str, float]:
        """The phases and ``total`` (wall seconds since the clock started)."""
        return self.seconds | {"total": time.perf_counter() - self.start}


class TimedSegmenter:
    """A Segmenter whose ``crop_logits`` calls are timed and whose crops are counted.

    Everything else is the wrapped segmenter's (attribute access is delegated), so the
    crops, batches and logits are exactly those of the segmenter itself.
    """

    def __init__(self, segmenter) -> None:
        self._segmenter = segmenter
        self.model_seconds = 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._segmenter, name)

    def crop_logits(self, crops: torch.Tensor) -> torch.Tensor:
        """(B, 3, h, w) -> (B, Q, h, w), timed (CUDA synchronised)."""
        begin = time.perf_counter()
        logits = self._segmenter.crop_logits(crops)
        if logits.device.type == "cuda":
            torch.cuda.synchronize(logits.device)
        self.model_seconds += time.perf_counter() - begin
        return logits


def dtype_name(segmenter) -> str:
    """fp32, fp16 or bf16: the dtype the segmenter's crops run in."""
    from reattn_batch.workers.segmenter import autocast_dtype

    dtype = autocast_dtype(segmenter.cfg.dtype, segmenter.device)
    return {None: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]


def model_facts(segmenter) -> dict[str, Any]:
    """``device``, ``dtype`` and ``batch_size`` of a (possibly timed) segmenter."""
    return {
        "device": str(segmenter.device),
        "dtype": dtype_name(segmenter),
        "batch_size": int(segmenter.batch_size),
    }


def write_clock(path: Path, clock: Clock, **facts: Any) -> None:
    """Write ``clock``'s report (its seconds and facts, then ``facts``) to ``path``."""
    write_report(path, seconds=clock.totals(), **(clock.facts | facts))


def write_report(path: Path, *, seconds: dict[str, float], crops_run: int, **facts: Any) -> None:
    """Write the report JSON (module docstring) to ``path``."""
    missing = [k for k in (*PHASES, "total") if k not in seconds]
    if missing:
        raise ValueError(f"report seconds lack {missing}")
    body = {"seconds": {k: round(v, 6) for k, v in seconds.items()}, "crops_run": crops_run}
    body |= facts
    Path(path).write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")


def write_run_report(path: Path, summary, *, wall_seconds: float) -> None:
    """`run`'s report: phases summed over its tasks, ``total`` the command's wall time;
    ``crops_in_scene`` and ``blocks`` too (reattn_batch.run.summary.RunSummary)."""
    seconds = dict.fromkeys(PHASES, 0.0) | summary.seconds | {"total": wall_seconds}
    facts = {"device": None, "dtype": None, "batch_size": None} | summary.facts
    write_report(
        path,
        seconds=seconds,
        crops_run=summary.crops,
        crops_in_scene=summary.crops_in_scene,
        blocks=summary.blocks,
        blocks_computed=summary.computed,
        block_size=summary.block_size,
        seconds_are=(
            "load, text, model, post and write are summed over this run's tasks (they "
            "overlap in time across workers); total is the command's wall time"
        ),
        **facts,
    )


def write_eval_report(path: Path, results, *, wall_seconds: float) -> None:
    """`eval`'s report: phases summed over its settings and, on a Dask cluster
    (--scheduler), over the image tasks (measured on the workers, overlapping in time);
    ``total`` is the command's wall time."""
    clocks = [r.clock for r in results if r.clock is not None]
    seconds = dict.fromkeys(PHASES, 0.0)
    facts: dict[str, Any] = {"device": None, "dtype": None, "batch_size": None}
    crops = 0
    for clock in clocks:
        for phase, value in clock.seconds.items():
            seconds[phase] = seconds.get(phase, 0.0) + value
        crops += clock.facts.get("crops_run", 0)
        facts |= {k: v for k, v in clock.facts.items() if k != "crops_run"}
    write_report(
        path,
        seconds=seconds | {"total": wall_seconds},
        crops_run=crops,
        images=sum(r.images for r in results),
        settings=len(results),
        seconds_are=(
            "phases summed over the settings evaluated and, on a Dask cluster, over the "
            "image tasks (they overlap in time across workers); total is the command's "
            "wall time"
        ),
        **facts,
    )
