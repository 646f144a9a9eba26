"""A real single-node SLURM for the tests (deploy/slurm/single-node.sh) and what the tests
do with it: submit, list and cancel jobs, run deploy/slurm/launch.py in a session of its own.

The daemons (munged, slurmctld, slurmd) run as root on loopback; their config lives in
$REATTN_SLURM_DIR (default /run/reattn-slurm), and commands find it through SLURM_CONF.
Jobs are told apart by a comment (``--comment TAG``, squeue's ``%k``), one per test.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "deploy" / "slurm" / "single-node.sh"
LAUNCHER = REPO / "deploy" / "slurm" / "launch.py"
SBATCH_RECIPE = REPO / "deploy" / "slurm" / "reattn-batch.sbatch"
SLURM_DIR = Path(os.environ.get("REATTN_SLURM_DIR", "/run/reattn-slurm"))
CONF = SLURM_DIR / "slurm.conf"
#: What the tests need: the client commands and the daemons single-node.sh starts.
BINARIES = ("sinfo", "sbatch", "squeue", "scancel", "scontrol", "slurmctld", "slurmd", "munged")
SBIN = os.pathsep.join(("/usr/local/sbin", "/usr/sbin", "/sbin"))
#: Job states in which a job still holds (or waits for) a node.
LIVE_STATES = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED"}


def missing_binaries() -> list[str]:
    path = f"{os.environ.get('PATH', '')}{os.pathsep}{SBIN}"
    return [name for name in BINARIES if shutil.which(name, path=path) is None]


def controller_answers() -> bool:
    """Our controller is up (never asked without a config file: scontrol would look for
    one through DNS for about a minute)."""
    if not CONF.is_file():
        return False
    ping = subprocess.run(["scontrol", "ping"], env=os.environ | {"SLURM_CONF": str(CONF)},
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    return "is UP" in ping.stdout


def single_node(action: str) -> subprocess.CompletedProcess:
    """deploy/slurm/single-node.sh ACTION, as root (through `sudo -n` for other users)."""
    cmd = ["bash", str(SCRIPT), action]
    if os.geteuid() != 0:
        cmd = ["sudo", "-n", *cmd]
    env = os.environ | {"PATH": f"{os.environ.get('PATH', '')}{os.pathsep}{SBIN}"}
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    except OSError as exc:  # no sudo
        return subprocess.CompletedProcess(cmd, 1, "", f"{cmd[0]}: {exc}\n")


def new_tag() -> str:
    return f"reattn-test-{uuid.uuid4().hex[:10]}"


def jobs(tag: str) -> dict[str, tuple[str, str]]:
    """{job id: (state, name)} of every job (finished ones too) with comment ``tag``."""
    out = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%i|%T|%k|%j"],
                         capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    found = {}
    for line in out.stdout.splitlines():
        job_id, state, comment, name = line.strip().split("|", 3)
        if comment == tag:
            found[job_id] = (state, name)
    return found


def live_jobs(tag: str, name: str | None = None) -> list[str]:
    return sorted(
        (i for i, (state, n) in jobs(tag).items()
         if state in LIVE_STATES and (name is None or n == name)),
        key=int,
    )  # fmt: skip


def running_jobs(tag: str, name: str | None = None) -> list[str]:
    return sorted(
        (i for i, (state, n) in jobs(tag).items()
         if state == "RUNNING" and (name is None or n == name)),
        key=int,
    )  # fmt: skip


def cancel_tag(tag: str) -> None:
    """Cancel whatever a test left (its jobs only)."""
    ids = live_jobs(tag)
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True, timeout=60)


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def node_memory_mb() -> int:
    out = subprocess.run(["sinfo", "-h", "-N", "-o", "%m"], capture_output=True, text=True,
                         timeout=60, check=True)  # fmt: skip
    return int(out.stdout.split()[0])


def node_cpus() -> int:
    out = subprocess.run(["sinfo", "-h", "-N", "-o", "%c"], capture_output=True, text=True,
                         timeout=60, check=True)  # fmt: skip
    return int(out.stdout.split()[0])


def shim_bin(directory: Path) -> Path:
    """A folder with ``dask`` for this environment's Python (a virtual environment may
    lack the console script), to put first on PATH for jobs."""
    directory.mkdir(parents=True, exist_ok=True)
    dask = directory / "dask"
    dask.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m dask "$@"\n')
    dask.chmod(0o755)
    return directory


def worker_environment() -> dict:
    """Run on a worker: what its model would run with."""
    import os

    import torch

    return {
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "MALLOC_TRIM_THRESHOLD_": os.environ.get("MALLOC_TRIM_THRESHOLD_"),
        "torch_threads": torch.get_num_threads(),
        "slurm_job": os.environ.get("SLURM_JOB_ID"),
        "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }


@dataclass
class Launch:
    """A launcher process (deploy/slurm/launch.py) with its output in files."""

    proc: subprocess.Popen
    out: Path
    err: Path

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"launcher still running after {timeout:.0f} s:\n{self.err_text()[-4000:]}"
            ) from None

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, 9)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=30)

    def out_text(self) -> str:
        return self.out.read_text(errors="replace")

    def err_text(self) -> str:
        return self.err.read_text(errors="replace")

    def lines(self, prefix: str) -> list[str]:
        return [ln for ln in self.err_text().splitlines() if ln.startswith(prefix)]


def launch(workdir: Path, args: list[str], env: dict[str, str]) -> Launch:
    """``python deploy/slurm/launch.py ARGS`` in a session of its own."""
    workdir.mkdir(parents=True, exist_ok=True)
    out, err = workdir / "launcher.out", workdir / "launcher.err"
    with open(out, "w") as o, open(err, "w") as e:
        proc = subprocess.Popen([sys.executable, str(LAUNCHER), *map(str, args)], stdout=o,
                                stderr=e, env=env, cwd=workdir,
                                start_new_session=True)  # fmt: skip
    return Launch(proc, out, err)
