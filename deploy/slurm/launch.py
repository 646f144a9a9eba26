#!/usr/bin/env python
"""Run `reattn-batch run` on SLURM GPU workers started through dask-jobqueue.

    python deploy/slurm/launch.py --workers 8 --partition gpu --account X \\
        --walltime 04:00:00 -- run SCENE --classes building,road,water,tree --out OUT.zarr

The scheduler runs in this process (a login node or a small CPU job). Each SLURM job
holds one Dask worker with one GPU (``#SBATCH --gres=gpu:1``), one thread and
``--resources GPU=1``, so that every model task takes a GPU of its own. Once the
workers have joined, the scheduler's address is written to a scheduler file and
``reattn-batch run ... --scheduler-file F`` runs against it; its exit status is ours.
``--print-job-script`` prints the job script a worker would get, and submits nothing.
Needs ``pip install "reattn-batch[slurm]"`` (dask-jobqueue) on the launching host.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

TLS_ENV = {  # what `reattn-batch run` (a Dask client) reads for tls:// addresses
    "ca": "DASK_DISTRIBUTED__COMM__TLS__CA_FILE",
    "cert": "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT",
    "key": "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY",
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="launch.py",
        description="Start GPU Dask workers as SLURM jobs and run reattn-batch against them.",
        epilog="Everything after `--` goes to reattn-batch: `-- run SCENE --classes ...`.",
    )
    p.add_argument("--workers", type=int, default=1, help="GPU workers = SLURM jobs (default 1).")
    p.add_argument(
        "--min-workers",
        type=int,
        help="Start the run once this many workers joined (default: all of --workers).",
    )
    p.add_argument("--partition", help="SLURM partition (#SBATCH -p).")
    p.add_argument("--account", help="SLURM account (#SBATCH -A).")
    p.add_argument("--walltime", default="04:00:00", help="Per worker job (default 04:00:00).")
    p.add_argument("--gres", default="gpu:1", help="GPU request per job (default gpu:1).")
    p.add_argument(
        "--cpus-per-worker",
        type=int,
        default=8,
        help="CPU cores per job for reading and resampling (default 8).",
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
        help="Scheduler file to write (default: ./reattn-batch-scheduler-PID.json).",
    )
    p.add_argument(
        "--wait-timeout",
        type=float,
        default=3600.0,
        help="Seconds to wait for the workers to leave the queue (default 3600).",
    )
    p.add_argument("--tls-ca-file", help="TLS: CA certificate (PEM) trusted by every party.")
    p.add_argument("--tls-cert", help="TLS: certificate of scheduler, workers and client.")
    p.add_argument("--tls-key", help="TLS: private key of --tls-cert.")
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
    if args.workers < 1 or (args.min_workers is not None and args.min_workers < 1):
        p.error("--workers and --min-workers must be at least 1")
    if not args.print_job_script:
        if "run" not in args.run_args:
            p.error("nothing to run: add `-- run SCENE --classes ...` (or --print-job-script)")
        if any(a.split("=")[0] in ("--scheduler", "--scheduler-file") for a in args.run_args):
            p.error("leave --scheduler/--scheduler-file out of the run: the launcher adds it")
    return args


def security(args: argparse.Namespace):
    """A distributed Security for the TLS trio, or None."""
    if not args.tls_ca_file:
        return None
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


def cluster_kwargs(args: argparse.Namespace) -> dict:
    """SLURMCluster keywords: one GPU, one thread and GPU=1 per worker job."""
    scheduler_options = {"dashboard_address": args.dashboard_address}
    if args.scheduler_host:
        scheduler_options["host"] = args.scheduler_host
    kwargs = {
        "queue": args.partition,
        "account": args.account,
        "walltime": args.walltime,
        "cores": 1,  # -> `--nthreads 1`: one model task at a time per GPU
        "processes": 1,  # one worker process per job
        "job_cpu": args.cpus_per_worker,  # -> --cpus-per-task: cores for I/O and resampling
        "memory": args.memory,
        "job_extra_directives": [f"--gres={args.gres}", *args.job_extra],
        "worker_extra_args": ["--resources", "GPU=1"],
        "job_script_prologue": list(args.prologue),
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


def build_cluster(args: argparse.Namespace):
    """The SLURMCluster (its scheduler starts here; no job is submitted yet)."""
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:
        sys.exit('launch.py: error: dask-jobqueue is missing: pip install "reattn-batch[slurm]"')
    return SLURMCluster(**cluster_kwargs(args))


def run_env(args: argparse.Namespace) -> dict[str, str]:
    env = dict(os.environ)
    if args.tls_ca_file:
        env[TLS_ENV["ca"]] = args.tls_ca_file
        env[TLS_ENV["cert"]] = args.tls_cert
        env[TLS_ENV["key"]] = args.tls_key
        env["DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION"] = "True"
    return env


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cluster = build_cluster(args)
    try:
        if args.print_job_script:
            print(cluster.job_script())
            return 0
        from distributed import Client

        scheduler_file = args.scheduler_file or Path(f"reattn-batch-scheduler-{os.getpid()}.json")
        print(f"launch.py: scheduler {cluster.scheduler_address} ({cluster.dashboard_link})")
        cluster.scale(jobs=args.workers)
        with Client(cluster, security=security(args)) as client:
            wanted = min(args.min_workers or args.workers, args.workers)
            print(f"launch.py: waiting for {wanted} of {args.workers} GPU workers (SLURM queue)")
            try:
                client.wait_for_workers(wanted, timeout=args.wait_timeout)
            except TimeoutError:
                print(
                    f"launch.py: error: fewer than {wanted} workers joined within "
                    f"{args.wait_timeout:g} s: see `squeue --me` and the job logs "
                    "(--log-directory), or raise --wait-timeout",
                    file=sys.stderr,
                )
                return 1
            client.write_scheduler_file(str(scheduler_file))
            # the client side runs here, with this host's reattn-batch
            cmd = [sys.executable, "-m", "reattn_batch", *args.run_args, "--scheduler-file",
                   str(scheduler_file)]  # fmt: skip
            print("launch.py: " + " ".join(cmd))
            return subprocess.call(cmd, env=run_env(args))
    finally:
        cluster.close()


if __name__ == "__main__":
    sys.exit(main())
