#!/usr/bin/env python
"""Run `reattn-batch run` (or `job run`) on SLURM workers started through dask-jobqueue.

    python deploy/slurm/launch.py --workers 8 --partition gpu --account X \\
        --walltime 04:00:00 -- run SCENE --classes building,road,water,tree --out OUT.zarr

The scheduler runs in this process (a login node or a small CPU job). Each SLURM job
holds one Dask worker with one thread: with a GPU (``#SBATCH --gres=gpu:1``) and
``--resources GPU=1``, so that every model task takes a GPU of its own, or with
``--gres none`` a CPU worker whose model uses the job's ``--cpus-per-worker`` cores.
Once the workers have joined, the scheduler's address is written to a scheduler file
and ``reattn-batch run ... --scheduler-file F`` runs against it; its exit status is
ours. ``--adapt`` keeps ``--workers`` jobs (up to ``--max-workers`` while tasks wait)
and replaces jobs that end: cancelled, preempted or at their walltime.

A worker job that SLURM refuses (sbatch's error), or holds with a reason that never
clears (e.g. ``PartitionConfig``: more CPUs or memory than a node has), or that ends
before its worker joined, ends the launcher at once with one line. SIGTERM or SIGINT
(the launcher's own job cancelled or at its walltime, Ctrl-C) stops the run, cancels
the worker jobs and exits with one line; finished blocks stay for ``--resume``.
The scheduler file is removed when the launcher ends. ``--print-job-script`` prints
the job script a worker would get, and submits nothing. Needs
``pip install "reattn-batch[slurm]"`` (dask-jobqueue) on the launching host.

TLS by default: the scheduler listens on ``tls://`` and it, the workers and the run
present certificates of one CA and require encryption, so that no one else who reaches
the nodes can join the cluster or run code on its workers. The certificates are either
given (``--tls-ca-file``, ``--tls-cert``, ``--tls-key``: files on the shared filesystem,
made e.g. by deploy/tls/make-certs.sh), or else throwaway ones that the launcher makes
with deploy/tls/make-certs.sh in a private folder beside the scheduler file
(``SCHEDULER-FILE-STEM.tls/``, mode 0700), removed when it ends. ``--insecure-tcp``:
plain ``tcp://``, only on a machine no one else uses.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

#: The certificate helper (deploy/tls/make-certs.sh), for throwaway per-launch certificates.
MAKE_CERTS = Path(__file__).resolve().parents[1] / "tls" / "make-certs.sh"
TLS_ENV = {  # what `reattn-batch run` (a Dask client) reads for tls:// addresses
    "ca": "DASK_DISTRIBUTED__COMM__TLS__CA_FILE",
    "cert": "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT",
    "key": "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY",
}

#: Pending reasons SLURM gives a job that will not start as submitted (squeue %r).
HOPELESS_REASONS = re.compile(
    r"PartitionConfig|BadConstraints|PartitionNodeLimit|PartitionTimeLimit|InvalidAccount"
    r"|InvalidQOS|AccountNotAllowed|QOSNotAllowed|DependencyNeverSatisfied"
    r"|(QOS|Assoc)Max\w*PerJob\w*"
)
#: Job states after which a job runs no worker any more.
ENDED_STATES = {"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL",
                "OUT_OF_MEMORY", "PREEMPTED", "REVOKED", "TIMEOUT"}  # fmt: skip
POLL_SECONDS = 0.5
QUEUE_POLL_SECONDS = 3.0
#: Seconds the run gets to end after the launcher forwarded SIGTERM to it.
RUN_STOP_SECONDS = 20.0


class LaunchError(Exception):
    """Ends the launcher with one line (``launch.py: error: ...``) and status 1."""


class Stopped(Exception):
    """SIGTERM or SIGINT arrived."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="launch.py",
        description="Start Dask workers as SLURM jobs and run reattn-batch against them.",
        epilog="Everything after `--` goes to reattn-batch: `-- run SCENE --classes ...`, or "
        "`-- job run SPEC.yaml` for a spec whose `cluster:` section is "
        "`scheduler_file: PATH` (the launcher writes its scheduler file there).",
    )
    p.add_argument("--workers", type=int, default=1, help="Worker jobs (default 1).")
    p.add_argument(
        "--min-workers",
        type=int,
        help="Start the run once this many workers joined (default: all of --workers).",
    )
    p.add_argument(
        "--adapt",
        action="store_true",
        help="Adaptive scaling (dask-jobqueue's cluster.adapt): keep at least --workers "
        "jobs and submit new ones for jobs that end (cancelled, preempted, walltime), up "
        "to --max-workers while tasks wait.",
    )
    p.add_argument(
        "--max-workers",
        type=int,
        help="With --adapt: at most this many worker jobs (default: --workers).",
    )
    p.add_argument("--partition", help="SLURM partition (#SBATCH -p).")
    p.add_argument("--account", help="SLURM account (#SBATCH -A).")
    p.add_argument("--walltime", default="04:00:00", help="Per worker job (default 04:00:00).")
    p.add_argument(
        "--gres",
        default="gpu:1",
        help="GPU request per job (default gpu:1); `none`: CPU workers, which advertise "
        "no GPU and whose model uses --cpus-per-worker threads.",
    )
    p.add_argument(
        "--cpus-per-worker",
        type=int,
        default=8,
        help="CPU cores per job: for reading and resampling, and a CPU worker's model (default 8).",
    )
    p.add_argument("--memory", default="32GiB", help="Memory per job (default 32GiB).")
    p.add_argument(
        "--job-extra",
        action="append",
        default=[],
        metavar="DIRECTIVE",
        help="Extra #SBATCH directive, repeatable (e.g. --job-extra=--constraint=a100).",
    )
    p.add_argument(
        "--prologue",
        action="append",
        default=[],
        metavar="LINE",
        help="Shell line run before the worker, repeatable (e.g. 'module load cuda').",
    )
    p.add_argument(
        "--python",
        default=sys.executable,
        help="Python on the compute nodes with reattn-batch installed (default: this one).",
    )
    p.add_argument("--interface", help="Network interface of scheduler and workers (e.g. ib0).")
    p.add_argument(
        "--scheduler-host", help="Address the scheduler listens on (default: chosen by Dask)."
    )
    p.add_argument(
        "--dashboard-address", default=":8787", help="Scheduler dashboard (default :8787)."
    )
    p.add_argument(
        "--local-directory", help="Worker scratch on the compute nodes (e.g. /tmp or $TMPDIR)."
    )
    p.add_argument("--log-directory", help="Where SLURM writes the worker jobs' logs.")
    p.add_argument(
        "--scheduler-file",
        type=Path,
        help="Scheduler file to write, removed at the end (default: "
        "./reattn-batch-scheduler-PID.json; for `job run`: the spec's).",
    )
    p.add_argument(
        "--wait-timeout",
        type=float,
        default=3600.0,
        help="Seconds to wait for the workers to leave the queue (default 3600).",
    )
    p.add_argument(
        "--tls-ca-file",
        help="TLS: CA certificate (PEM) trusted by every party (default: throwaway "
        "certificates of this launch, made by deploy/tls/make-certs.sh beside the "
        "scheduler file and removed at the end).",
    )
    p.add_argument("--tls-cert", help="TLS: certificate of scheduler, workers and client.")
    p.add_argument("--tls-key", help="TLS: private key of --tls-cert.")
    p.add_argument(
        "--insecure-tcp",
        action="store_true",
        help="No TLS: plain tcp://, where anyone who reaches the scheduler's port can run "
        "code on the workers. Only on a machine no one else uses.",
    )
    p.add_argument(
        "--print-job-script",
        action="store_true",
        help="Print the worker job script and exit; submits nothing.",
    )
    p.add_argument("run_args", nargs=argparse.REMAINDER, help="-- reattn-batch arguments")
    args = p.parse_args(argv)
    if args.run_args[:1] == ["--"]:
        args.run_args = args.run_args[1:]
    tls = [args.tls_ca_file, args.tls_cert, args.tls_key]
    if any(tls) and not all(tls):
        p.error("TLS needs all three of --tls-ca-file, --tls-cert and --tls-key")
    if any(tls) and args.insecure_tcp:
        p.error("--insecure-tcp and --tls-* contradict each other: choose one")
    if args.workers < 1 or (args.min_workers is not None and args.min_workers < 1):
        p.error("--workers and --min-workers must be at least 1")
    if args.max_workers is not None and not args.adapt:
        p.error("--max-workers needs --adapt")
    if args.max_workers is not None and args.max_workers < args.workers:
        p.error(f"--max-workers {args.max_workers} is below --workers {args.workers}")
    args.job = args.run_args[:2] == ["job", "run"]
    if not args.print_job_script:
        if args.run_args[:1] != ["run"] and not args.job:
            p.error(
                "nothing to run: add `-- run SCENE --classes ...` or `-- job run SPEC.yaml` "
                "(or --print-job-script)"
            )
        if any(a.split("=")[0] in ("--scheduler", "--scheduler-file") for a in args.run_args):
            p.error("leave --scheduler/--scheduler-file out of the run: the launcher adds it")
        if args.job:
            try:
                args.scheduler_file = job_scheduler_file(args.run_args, args.scheduler_file)
            except LaunchError as exc:
                p.error(str(exc))
    return args


def job_scheduler_file(run_args: list[str], given: Path | None) -> Path:
    """The scheduler file of ``job run SPEC.yaml``: a job takes its cluster from its spec's
    ``cluster:`` section (no ``--scheduler-file`` option), so that section must name the
    file this launcher writes: ``cluster: {scheduler_file: PATH}`` (relative to the spec's
    folder, as ``job run`` reads it)."""
    import yaml

    specs = [a for a in run_args[2:] if not a.startswith("-")]
    if not specs:
        raise LaunchError("`job run` needs SPEC.yaml")
    spec = Path(specs[0])
    try:
        raw = yaml.safe_load(spec.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise LaunchError(f"job spec {spec}: cannot read it ({type(exc).__name__})") from None
    cluster = raw.get("cluster") if isinstance(raw, dict) else None
    value = cluster.get("scheduler_file") if isinstance(cluster, dict) else None
    if not isinstance(value, str) or not value.strip():
        raise LaunchError(
            f"job spec {spec}: `job run` takes its cluster from the spec, so its `cluster:` "
            "section must be `scheduler_file: PATH` (on a filesystem the launcher and the "
            "run share); the launcher then writes its scheduler file there"
        )
    path = Path(value.strip()).expanduser()
    path = path if path.is_absolute() else spec.resolve().parent / path
    if given is not None and given.resolve() != path.resolve():
        raise LaunchError(
            f"--scheduler-file {given} differs from the spec's cluster.scheduler_file {path}: "
            "drop --scheduler-file (the spec's is used)"
        )
    return path


def gpu_workers(args: argparse.Namespace) -> bool:
    return args.gres.strip().lower() not in ("none", "")


def tls_folder(scheduler_file: Path) -> Path:
    """Where the throwaway certificates go: beside the scheduler file, which the run reads
    (a filesystem the worker jobs see too)."""
    return scheduler_file.parent / f"{scheduler_file.stem}.tls"


def throwaway_certificates(args: argparse.Namespace, folder: Path) -> None:
    """Make a CA and one certificate/key of this launch in ``folder`` (claimed, mode 0700, with
    deploy/tls/make-certs.sh) and use them as ``--tls-*``."""
    try:
        made = subprocess.run(["bash", str(MAKE_CERTS), "--quiet", str(folder)],
                              capture_output=True, text=True, timeout=120)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        made = subprocess.CompletedProcess([], 1, "", f"{MAKE_CERTS}: {exc}")
    if made.returncode != 0:
        why = (made.stderr.strip().splitlines() or [f"status {made.returncode}"])[-1]
        raise LaunchError(
            f"cannot make this launch's TLS certificates ({why}): give --tls-ca-file, "
            "--tls-cert and --tls-key (deploy/tls/make-certs.sh makes them)"
        )
    args.tls_ca_file = str(folder / "ca.crt")
    args.tls_cert = str(folder / "tls.crt")
    args.tls_key = str(folder / "tls.key")


def security(args: argparse.Namespace):
    """A distributed Security for the TLS trio; None with ``--insecure-tcp``."""
    if args.insecure_tcp:
        return None
    if not args.tls_ca_file:
        raise LaunchError("no TLS certificates: give --tls-ca-file, --tls-cert and --tls-key")
    from distributed.security import Security

    return Security(
        tls_ca_file=args.tls_ca_file,
        tls_scheduler_cert=args.tls_cert,
        tls_scheduler_key=args.tls_key,
        tls_worker_cert=args.tls_cert,
        tls_worker_key=args.tls_key,
        tls_client_cert=args.tls_cert,
        tls_client_key=args.tls_key,
        require_encryption=True,
    )


def cpu_worker_prologue(threads: int) -> list[str]:
    """Job script lines for a CPU worker: Dask's nanny would start it with
    OMP_NUM_THREADS=1 (torch on one core) and MALLOC_TRIM_THRESHOLD_=65536 (which roughly
    halved CPU model throughput, README "Performance"); give it the job's cores and
    glibc's own malloc trimming instead. (The nanny's pre-spawn-environ as one Dask config
    variable: its keys keep their case only inside a value.)"""
    env = {"MALLOC_TRIM_THRESHOLD_": None} | {
        name: threads for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
    }
    return [
        "unset MALLOC_TRIM_THRESHOLD_",
        *(f"export {name}={threads}" for name in env if name != "MALLOC_TRIM_THRESHOLD_"),
        f'export DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON="{env!r}"',
    ]


def cluster_kwargs(args: argparse.Namespace) -> dict:
    """SLURMCluster keywords: one worker process of one thread per job; with a GPU
    request also the GPU=1 resource, else the CPU worker's environment."""
    scheduler_options = {"dashboard_address": args.dashboard_address}
    if args.scheduler_host:
        scheduler_options["host"] = args.scheduler_host
    gpu = gpu_workers(args)
    kwargs = {
        "queue": args.partition,
        "account": args.account,
        "walltime": args.walltime,
        "cores": 1,  # -> `--nthreads 1`: one model task at a time per worker
        "processes": 1,  # one worker process per job
        "job_cpu": args.cpus_per_worker,  # -> --cpus-per-task: cores for I/O and resampling
        "memory": args.memory,
        "job_extra_directives": [*([f"--gres={args.gres}"] if gpu else []), *args.job_extra],
        "worker_extra_args": ["--resources", "GPU=1"] if gpu else [],
        "job_script_prologue": [
            *([] if gpu else cpu_worker_prologue(args.cpus_per_worker)),
            *args.prologue,
        ],
        "python": args.python,
        "job_name": "reattn-batch-worker",
        "scheduler_options": scheduler_options,
        "interface": args.interface,
        "local_directory": args.local_directory,
        "log_directory": args.log_directory,
    }
    tls = security(args)
    if tls is not None:
        kwargs["security"] = tls
        kwargs["protocol"] = "tls://"
    return kwargs


def sbatch_error(exc: BaseException) -> str:
    """sbatch's own words from dask-jobqueue's RuntimeError (its stderr, on one line)."""
    text = str(exc)
    err = text.split("stderr:", 1)[1] if "stderr:" in text else text
    lines = [line.strip() for line in err.splitlines() if line.strip()]
    return "; ".join(lines) or " ".join(text.split())


def recording_job_class(refusals: list[str]):
    """A SLURMJob that records a refused submission in ``refusals`` (sbatch's line)
    instead of raising it inside dask-jobqueue's event loop, where it only showed as
    "Task exception was never retrieved" while the launcher waited on."""
    from dask_jobqueue.slurm import SLURMJob
    from distributed.deploy.spec import ProcessInterface

    class RecordingSLURMJob(SLURMJob):
        async def start(self):
            try:
                await super().start()
            except (RuntimeError, ValueError) as exc:
                refusals.append(sbatch_error(exc))
                await ProcessInterface.start(self)  # a placeholder without a job id

    return RecordingSLURMJob


def build_cluster(args: argparse.Namespace, refusals: list[str] | None = None):
    """The SLURMCluster (its scheduler starts here; no job is submitted yet)."""
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:
        sys.exit('launch.py: error: dask-jobqueue is missing: pip install "reattn-batch[slurm]"')
    job_cls = recording_job_class(refusals if refusals is not None else [])
    return SLURMCluster(job_cls=job_cls, **cluster_kwargs(args))


def run_env(args: argparse.Namespace) -> dict[str, str]:
    env = dict(os.environ)
    if args.tls_ca_file:  # given, or the throwaway ones (none with --insecure-tcp)
        env[TLS_ENV["ca"]] = args.tls_ca_file
        env[TLS_ENV["cert"]] = args.tls_cert
        env[TLS_ENV["key"]] = args.tls_key
        env["DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION"] = "True"
    return env


def job_ids(cluster) -> dict[str, str]:
    """{job id: worker name} of the jobs submitted so far."""
    return {
        job.job_id: name
        for name, job in list(cluster.workers.items())
        if getattr(job, "job_id", None)
    }


def queue_states(ids: list[str]) -> dict[str, tuple[str, str]] | None:
    """{job id: (state, reason)} from squeue (None when squeue cannot answer now)."""
    if not ids:
        return {}
    try:
        out = subprocess.run(
            ["squeue", "-h", "-t", "all", "-j", ",".join(ids), "-o", "%i|%T|%r"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    states = {}
    for line in out.stdout.splitlines():
        fields = line.strip().split("|")
        if len(fields) == 3:
            states[fields[0]] = (fields[1], fields[2])
    if out.returncode != 0 and not states:
        return None
    return states


def check_queue(cluster, joined: set[str], args: argparse.Namespace) -> None:
    """Raise LaunchError for a worker job that will not start as submitted, or that
    ended before its worker joined."""
    ids = job_ids(cluster)
    states = queue_states(list(ids))
    if states is None:
        return
    for job_id, name in ids.items():
        state, reason = states.get(job_id, ("ENDED", "no longer known to squeue"))
        if state == "PENDING" and HOPELESS_REASONS.fullmatch(reason):
            raise LaunchError(
                f"SLURM will not start worker job {job_id}: pending with reason {reason} "
                f"(does the request fit a node: --cpus-per-worker {args.cpus_per_worker}, "
                f"--memory {args.memory}, --gres {args.gres}, --walltime {args.walltime}? "
                f"`scontrol show job {job_id}`, `sinfo -N -l`)"
            )
        if (state in ENDED_STATES or state == "ENDED") and name not in joined:
            raise LaunchError(
                f"worker job {job_id} ended ({state}) before its worker joined: see the job's "
                f"log ({args.log_directory or '.'}/reattn-batch-worker-{job_id}.err, or "
                f"slurm-{job_id}.out)"
            )


def wait_for_workers(cluster, client, args: argparse.Namespace, refusals: list[str]) -> None:
    """Until ``--min-workers`` (default ``--workers``) workers joined; a refused, hopeless
    or failed worker job ends the wait at once."""
    wanted = min(args.min_workers or args.workers, args.workers)
    kind = "GPU" if gpu_workers(args) else "CPU"
    print(f"launch.py: waiting for {wanted} of {args.workers} {kind} workers (SLURM queue)")
    joined: set[str] = set()
    deadline = time.monotonic() + args.wait_timeout
    next_queue_check = 0.0
    while True:
        workers = client.scheduler_info(n_workers=-1)["workers"]
        joined |= {str(w.get("name")) for w in workers.values()}
        if len(workers) >= wanted:
            return
        if refusals:
            raise LaunchError(f"sbatch refused the worker job: {refusals[0]}")
        now = time.monotonic()
        if now >= next_queue_check:
            check_queue(cluster, joined, args)
            next_queue_check = now + QUEUE_POLL_SECONDS
        if now > deadline:
            raise LaunchError(
                f"fewer than {wanted} workers joined within {args.wait_timeout:g} s: see "
                "`squeue --me` and the job logs (--log-directory), or raise --wait-timeout"
            )
        time.sleep(POLL_SECONDS)


def run_command(args: argparse.Namespace, scheduler_file: Path) -> list[str]:
    """The client side, run here with this host's reattn-batch."""
    cmd = [sys.executable, "-m", "reattn_batch", *args.run_args]
    return cmd if args.job else [*cmd, "--scheduler-file", str(scheduler_file)]


def rerun_advice(args: argparse.Namespace) -> str:
    """What to do after a failed or stopped run: its scheduler and workers end with this
    launcher, so "start workers" cannot be followed; a new launcher can."""
    if args.job:
        return (
            "rerun this launcher with the same arguments (`job run` skips finished scenes "
            "and resumes partial ones)"
        )
    if "--resume" in args.run_args:
        return "rerun this launcher with the same arguments (the run has --resume)"
    if "--overwrite" in args.run_args:
        return "rerun this launcher with `--resume` in place of the run's `--overwrite`"
    return "rerun this launcher with the same arguments plus `--resume` in the run's"


def supervise(proc: subprocess.Popen, refusals: list[str]) -> int:
    """Wait for the run; report sbatch refusals of replacement jobs (--adapt) meanwhile."""
    reported = len(refusals)
    while proc.poll() is None:
        while reported < len(refusals):
            print(f"launch.py: warning: sbatch refused a worker job: {refusals[reported]}",
                  file=sys.stderr, flush=True)  # fmt: skip
            reported += 1
        time.sleep(POLL_SECONDS)
    return proc.returncode


def stop_run(proc: subprocess.Popen | None) -> None:
    """Forward SIGTERM to the run and give it RUN_STOP_SECONDS to end (before the
    scheduler it talks to goes), then kill it."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=RUN_STOP_SECONDS)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class StopSignals:
    """While active (a context manager, main thread only): the first SIGTERM or SIGINT
    raises Stopped; later ones (and all after :meth:`defer`) are ignored, so that the
    clean-up is not cut short. The previous handlers come back at the end."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.previous: dict = {}
        self.active = threading.current_thread() is threading.main_thread()

    def __enter__(self) -> StopSignals:
        if self.active:
            self.previous = {s: signal.signal(s, self._raise) for s in self.SIGNALS}
        return self

    def _raise(self, signum, frame):
        # once: SLURM signals every process of the job, and a wrapper script may forward
        # the same signal again while the first is being handled
        self.defer()
        raise Stopped(signum)

    def __exit__(self, *exc) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def defer(self) -> None:
        if self.active:
            for s in self.SIGNALS:
                signal.signal(s, lambda signum, frame: None)


def close_quietly(*closables) -> None:
    for thing in closables:
        if thing is not None:
            with contextlib.suppress(Exception):
                thing.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with StopSignals() as signals:
        return launch(args, signals)


def launch(args: argparse.Namespace, signals: StopSignals) -> int:
    """Workers, the run, its exit status; one line for what ends it otherwise."""
    refusals: list[str] = []
    cluster = client = proc = None
    scheduler_file = args.scheduler_file or Path(f"reattn-batch-scheduler-{os.getpid()}.json")
    wrote_file = False
    certificates = None  # the throwaway certificates' folder, removed at the end
    try:
        if args.insecure_tcp:
            print("launch.py: warning: --insecure-tcp: anyone who reaches the scheduler's "
                  "port can run code on the workers", file=sys.stderr, flush=True)  # fmt: skip
        elif not args.tls_ca_file:
            folder = tls_folder(scheduler_file)
            try:  # the claim: atomic, so two launchers never share (or remove) one folder
                folder.parent.mkdir(parents=True, exist_ok=True)
                folder.mkdir(mode=0o700)
            except FileExistsError:  # not ours: left alone
                raise LaunchError(
                    f"{folder} exists (a launcher with the same scheduler file is running, "
                    "or one was killed): remove it or choose another --scheduler-file"
                ) from None
            except OSError as exc:
                raise LaunchError(
                    f"cannot create {folder} for this launch's TLS certificates "
                    f"({exc.strerror or exc}): choose a --scheduler-file in a writable folder"
                ) from None
            certificates = folder
            throwaway_certificates(args, folder)
        cluster = build_cluster(args, refusals)
        if args.print_job_script:
            print(cluster.job_script())
            return 0
        from distributed import Client

        print(f"launch.py: scheduler {cluster.scheduler_address} ({cluster.dashboard_link})",
              flush=True)  # fmt: skip
        if args.adapt:
            cluster.adapt(minimum_jobs=args.workers, maximum_jobs=args.max_workers or args.workers)
        else:
            cluster.scale(jobs=args.workers)
        client = Client(cluster, security=security(args))
        wait_for_workers(cluster, client, args, refusals)
        wrote_file = True  # from here on, removed at the end
        try:
            scheduler_file.parent.mkdir(parents=True, exist_ok=True)
            client.write_scheduler_file(str(scheduler_file))
        except OSError as exc:
            raise LaunchError(f"cannot write the scheduler file {scheduler_file}: {exc}") from None
        cmd = run_command(args, scheduler_file)
        print("launch.py: " + " ".join(cmd), flush=True)
        proc = subprocess.Popen(cmd, env=run_env(args))
        rc = supervise(proc, refusals)
        if rc != 0:
            print(
                f"launch.py: error: the run ended with status {rc}; its scheduler and worker "
                f"jobs end with this launcher: {rerun_advice(args)}",
                file=sys.stderr, flush=True,
            )  # fmt: skip
        return rc
    except Stopped as stop:
        signals.defer()
        stop_run(proc)
        print(
            f"launch.py: error: stopped by {stop}: the worker jobs are cancelled and "
            f"finished blocks are kept; {rerun_advice(args)}",
            file=sys.stderr, flush=True,
        )  # fmt: skip
        return 128 + stop.signum
    except LaunchError as exc:
        print(f"launch.py: error: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        signals.defer()
        stop_run(proc)
        if wrote_file:  # it would point at a scheduler that is gone
            scheduler_file.unlink(missing_ok=True)
        close_quietly(client, cluster)
        if certificates is not None:
            shutil.rmtree(certificates, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
