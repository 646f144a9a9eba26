"""Where a run runs (SPEC 3.4): an embedded LocalCluster, or an existing scheduler."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import os
import signal
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import dask
from distributed import Client, LocalCluster, WorkerPlugin

from reattn_batch.run.broadcast import present, run_on_workers
from reattn_batch.settings import ClusterSettings
from reattn_batch.workers.environment import EnvironmentSettings
from reattn_batch.workers.errors import ClusterError


@dataclasses.dataclass(frozen=True)
class WorkerInfo:
    """One worker as the memory guard sees it."""

    threads: int
    memory_limit: int | None  # bytes (None: the worker has no limit)
    gpu: bool  # advertises the GPU resource
    gpu_memory: int | None = None  # bytes of its CUDA device (None: unknown / no GPU)


@dataclasses.dataclass(frozen=True)
class ClusterInfo:
    """What the job needs to know about the cluster it got."""

    gpu_resources: bool  # workers advertise GPU=1: model tasks must request it
    torch_threads: int  # intra-op threads per model task (0: leave the worker's setting)
    total_threads: int
    dashboard: str | None
    worker_memory_limit: int | None  # bytes, the smallest limit of a worker that has one
    workers: tuple[WorkerInfo, ...] = ()  # every worker at the start (for the memory guard)


def connect_timeout() -> float:
    """Seconds to wait for an existing scheduler: $REATTN_BATCH_CONNECT_TIMEOUT, default 15
    (``inf``: wait for ever)."""
    return EnvironmentSettings.from_env("connect_timeout").connect_timeout


TLS_ENV_HINT = (
    "DASK_DISTRIBUTED__COMM__TLS__CA_FILE, DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT "
    "and DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY"
)


def _is_tls_error(exc: BaseException) -> bool:
    text = str(exc)
    return "TLS" in text or "encryption required" in text


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def local_cluster(request: ClusterSettings) -> tuple[LocalCluster, int]:
    """One worker per GPU (GPU=1 each); else the measured CPU default: one worker of one
    thread whose model uses every core (see README, "Performance")."""
    gpus = _gpu_count()
    cores = os.cpu_count() or 1
    if gpus and request.workers is None:
        cluster = LocalCluster(
            n_workers=gpus, threads_per_worker=1, resources={"GPU": 1}, dashboard_address=":0"
        )
        return cluster, 0
    workers = request.workers or 1
    threads = request.threads_per_worker or 1
    torch_threads = max(1, cores // (workers * threads))
    # Dask's worker defaults suit pandas, not a model: MALLOC_TRIM_THRESHOLD_=65536 roughly
    # halved model throughput on CPU (benchmarks/pipeline_efficiency.py), and
    # OMP_NUM_THREADS=1 would pin torch to one core. Both are read at process start.
    environ = "distributed.nanny.pre-spawn-environ"
    with dask.config.set({
        f"{environ}.MALLOC_TRIM_THRESHOLD_": None,
        f"{environ}.OMP_NUM_THREADS": torch_threads,
        f"{environ}.MKL_NUM_THREADS": torch_threads,
    }):  # fmt: skip
        cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=threads,
            processes=True,
            dashboard_address=":0",
            resources={"GPU": 1} if gpus else None,
        )
    return cluster, torch_threads


class EmbeddedWorker(WorkerPlugin):
    """A worker of the embedded LocalCluster, which the driver starts and stops.

    It leaves SIGINT and SIGTERM to the driver: Ctrl-C and a SLURM preemption signal the
    whole process group, and the driver then stops the run in order (cancels, records,
    closes this cluster: run/stop.py), so no worker dies mid-task with a traceback. The
    driver closes it only at its end, abandoning on purpose the tasks still running then
    (a run that failed or was stopped): Dask's warnings while it closes are dropped, and
    its objects are left to the process's exit (``gc.freeze``: the final collection over
    torch's, GDAL's and Dask's objects takes seconds, past the nanny's 4 s wait)."""

    name = "reattn-embedded-worker"
    CLOSING = ("closing", "closing_gracefully", "closed")

    def setup(self, worker) -> None:
        if threading.current_thread() is threading.main_thread():  # a nanny's worker
            for each in (signal.SIGINT, signal.SIGTERM):
                signal.signal(each, signal.SIG_IGN)
        for handler in logging.getLogger("distributed").handlers:
            handler.addFilter(lambda record: worker.status.name not in self.CLOSING)

    def teardown(self, worker) -> None:
        gc.freeze()


def _cuda_memory() -> int | None:
    """Total bytes of this worker's CUDA device (run on a worker), None without one."""
    import torch

    if not torch.cuda.is_available():
        return None
    return int(torch.cuda.mem_get_info()[1])


def cluster_info(client: Client, torch_threads: int) -> ClusterInfo:
    """What the run needs to know about ALL workers (``n_workers=-1``: distributed releases
    before 2025 list only 5 by default); GPU workers report their device memory. Workers
    that leave meanwhile are skipped (:func:`~reattn_batch.run.broadcast.run_on_workers`)."""
    workers = client.scheduler_info(n_workers=-1)["workers"]
    gpu_workers = [a for a, w in workers.items() if "GPU" in w.get("resources", {})]
    gpu_memory: dict[str, int | None] = {}
    if gpu_workers:  # a worker that leaves or fails meanwhile: its memory is unknown
        gpu_memory = run_on_workers(
            client, _cuda_memory, workers=gpu_workers, what="the GPU memory query"
        )
        still = present(client)  # the memory guard sees those that stayed
        workers = {a: w for a, w in workers.items() if a in still}
    infos = tuple(
        WorkerInfo(
            threads=int(w.get("nthreads", 1)),
            memory_limit=int(w["memory_limit"]) if w.get("memory_limit") else None,
            gpu=address in gpu_workers,
            gpu_memory=gpu_memory.get(address),
        )
        for address, w in workers.items()
    )
    limits = [w.memory_limit for w in infos if w.memory_limit]
    return ClusterInfo(
        gpu_resources=bool(gpu_workers),
        torch_threads=torch_threads,
        total_threads=sum(w.threads for w in infos) or 1,
        worker_memory_limit=min(limits) if limits else None,
        dashboard=client.dashboard_link,
        workers=infos,
    )


@contextlib.contextmanager
def connect(request: ClusterSettings) -> Iterator[tuple[Client, ClusterInfo]]:
    """A Dask client for the request; closes what it started."""
    if request.scheduler or request.scheduler_file:
        where = request.scheduler or f"scheduler_file={request.scheduler_file}"
        if request.scheduler_file is not None and not Path(request.scheduler_file).is_file():
            raise ClusterError(
                f"scheduler_file={request.scheduler_file}: no such file; "
                "start `dask scheduler --scheduler-file F` first"
            )
        timeout = connect_timeout()
        try:
            client = Client(
                request.scheduler,
                scheduler_file=str(request.scheduler_file) if request.scheduler_file else None,
                timeout=f"{timeout}s",
            )
        except (FileNotFoundError, ssl.SSLError, TypeError, RuntimeError) as exc:
            if not isinstance(exc, OSError) and not _is_tls_error(exc):
                raise
            # distributed's words for a TLS set-up that cannot work: no certificates for
            # a tls:// address, a tcp:// one while encryption is required, unreadable files
            raise ClusterError(
                f"cannot connect to the Dask scheduler at {where}: TLS set-up: {exc}; "
                f"for tls:// set {TLS_ENV_HINT} (deploy/README.md, TLS)"
            ) from None
        except (OSError, TimeoutError, ValueError) as exc:
            raise ClusterError(
                f"could not reach the Dask scheduler at {where} within {timeout:g} s "
                f"({type(exc).__name__}): "
                "check the address and that the scheduler runs, "
                "or drop `scheduler` to use a local cluster"
            ) from None
        cluster = None
        torch_threads = 0
    else:
        cluster, torch_threads = local_cluster(request)
        client = Client(cluster)
        client.register_plugin(EmbeddedWorker())
    try:
        yield client, cluster_info(client, torch_threads)
    finally:
        # a run that failed or was stopped abandons its tasks on purpose: Dask's warnings
        # about them while the embedded cluster closes would bury the run's one line
        with _quiet_dask(cluster is not None):
            client.close()
            if cluster is not None:
                cluster.close()


@contextlib.contextmanager
def _quiet_dask(quiet: bool) -> Iterator[None]:
    """Dask's log at ERROR and above only, while active (``quiet``), unless it was set to
    say more (``-v``: INFO)."""
    logger = logging.getLogger("distributed")
    level = logger.level
    if quiet and logger.getEffectiveLevel() >= logging.WARNING:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
