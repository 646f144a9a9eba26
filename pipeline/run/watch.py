"""The no-worker watch (SPEC 3.5): a run whose tasks can run on no worker (a scheduler
with zero workers; the GPU workers gone after a walltime or a preemption while the tasks
request ``GPU=1``) ends with one line after ``no_worker_timeout`` seconds instead of
waiting forever. It also tells the submission window how many threads can take tasks now,
so the window follows workers that join or leave (adaptive SLURM/Kubernetes clusters).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from reattn_batch.run.bounded import window_for
from reattn_batch.workers.errors import UserError

#: Seconds between two reads of the scheduler's worker list.
POLL_SECONDS = 1.0


def able_workers(workers: dict, *, gpu: bool) -> list[dict]:
    """The workers (``scheduler_info(n_workers=-1)["workers"]`` values) that can run the
    run's tasks: every worker, or with ``gpu`` those advertising ``GPU >= 1``."""
    return [w for w in workers.values() if not gpu or w.get("resources", {}).get("GPU", 0) >= 1]


class NoWorkerError(UserError):
    """No worker could run the run's tasks for ``no_worker_timeout`` seconds."""


class NoWorkerWatch:
    """Call :meth:`check` often (it reads the scheduler at most every ``POLL_SECONDS``);
    it raises a UserError once no worker could run the tasks for ``timeout`` seconds."""

    def __init__(
        self,
        client,
        *,
        gpu: bool,
        timeout: float,
        out: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client, self.gpu, self.timeout, self.out, self.clock = client, gpu, timeout, out, clock
        self.last_read = -float("inf")
        self.last_able = clock()
        self.threads = 1
        self.check()

    def check(self) -> None:
        now = self.clock()
        if now - self.last_read < POLL_SECONDS:
            return
        self.last_read = now
        workers = self.client.scheduler_info(n_workers=-1)["workers"]
        able = able_workers(workers, gpu=self.gpu)
        if able:
            self.threads = sum(w.get("nthreads", 1) for w in able)
            self.last_able = now
            return
        if now - self.last_able >= self.timeout:
            raise NoWorkerError(self._message(len(workers)))

    def window(self) -> int:
        """The submission window for the threads that can take tasks now."""
        return window_for(self.threads)

    def _message(self, n_workers: int) -> str:
        kept = f"finished blocks are kept in {self.out}: rerun with resume=True"
        wait = "or raise no_worker_timeout (job specs: run.no_worker_timeout)"
        if self.gpu and n_workers:
            return (
                f"no Dask worker with the GPU resource for {self.timeout:g} s ({n_workers} "
                "worker(s) left, none advertises GPU=1, which the block tasks request since "
                "GPU workers were there at the start; walltime or preemption?): start GPU "
                f"workers (`dask worker ... --resources GPU=1`), {wait}; {kept}"
            )
        return (
            f"no Dask worker for {self.timeout:g} s (the scheduler has none"
            f"{' with the GPU resource' if self.gpu else ''}): start workers "
            f"(`dask worker SCHEDULER`), {wait}; {kept}"
        )
