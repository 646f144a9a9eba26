"""deploy/slurm/ on a real single-node SLURM (deploy/slurm/single-node.sh; issue 18, items
4 and 6): launch.py's worker jobs run the tiny model on CPU workers (`--gres none`) and
the store equals an embedded run's bit for bit; a cancelled worker job is survived; all
cancelled ends the run with one line and a second launcher finishes it (`--resume`,
`--adapt` replacing its cancelled job); refused or hopeless worker jobs end the launcher
at once with SLURM's words; a cancelled launcher job leaves a resumable store and no
scheduler file; `job run` through the launcher on fake-GPU workers; and the one-allocation
recipe reattn-batch.sbatch, twice at once on the node, and failing with one line. All of
it over tls://, with the throwaway certificates both make by default (issue 19).

The SLURM daemons are started by the session fixture when no controller answers (root,
or `sudo -n`); the tests skip only where SLURM is not installed (.ci/run installs it).
"""

from __future__ import annotations

import importlib.util
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import slurm_helpers as sh
from cli_helpers import (
    CLASSES,
    ERROR_PREFIX,
    TINY,
    TINY_MODEL_YAML,
    attrs,
    cli,
    done_blocks,
    env,
    labels,
    ok,
    write_scene,
)
from cluster_helpers import TlsFiles

#: The scene of the launcher tests: 1536 x 1536 px in 9 blocks of 512 (enough blocks to
#: cancel workers while some are left), and the run's arguments for it.
SIZE, BLOCK, BLOCKS = 1536, 512, 9
#: Each worker job's cores and memory: all cores (the embedded run's torch threads, so the
#: labels compare bit for bit; SLURM lets the worker jobs share the cores).
CPUS = os.cpu_count() or 1
WORKER = ["--gres", "none", "--cpus-per-worker", str(CPUS), "--memory", "2GiB",
          "--interface", "lo", "--dashboard-address", ":0", "--walltime", "00:30:00"]  # fmt: skip
LAUNCH_TIMEOUT = 600  # a hang guard, not a timing assert


@pytest.fixture(scope="session")
def slurm():
    """A controller that answers, on this machine; SLURM_CONF set for the session."""
    missing = sh.missing_binaries()
    if missing:
        pytest.skip(
            f"SLURM is not installed ({', '.join(missing)} not found): "
            "apt-get install slurm-wlm munge (.ci/run does)"
        )
    started = False
    if not sh.controller_answers():
        up = sh.single_node("up")
        if up.returncode != 0:
            pytest.fail(f"deploy/slurm/single-node.sh up failed:\n{up.stdout}{up.stderr}")
        started = True
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(sh.CONF)
    try:
        yield sh.CONF
    finally:
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous
        if started:
            sh.single_node("down")


@pytest.fixture
def tag(slurm):
    """This test's job comment; its jobs are cancelled whatever happens."""
    tag = sh.new_tag()
    try:
        yield tag
    finally:
        sh.cancel_tag(tag)


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    return write_scene(tmp_path_factory.mktemp("slurm-scene") / "scene.tif", SIZE, SIZE)


def run_args(scene: Path, store: Path, *extra: str) -> list[str]:
    return ["run", str(scene), *CLASSES, *TINY, "--block-size", str(BLOCK), "--out", str(store),
            *extra]  # fmt: skip


@pytest.fixture(scope="module")
def clean(scene, tmp_path_factory) -> Path:
    """The embedded run (`reattn-batch run`, its LocalCluster) of the scene."""
    store = tmp_path_factory.mktemp("slurm-clean") / "clean.zarr"
    ok(cli(*run_args(scene, store), timeout=LAUNCH_TIMEOUT))
    return store


def same_store(store: Path, clean: Path) -> None:
    assert attrs(store)["complete"] is True
    assert attrs(store)["run_fingerprint"] == attrs(clean)["run_fingerprint"]
    assert np.array_equal(labels(store), labels(clean))


def launcher_args(tmp_path: Path, tag: str, workers: int, *extra: str) -> list[str]:
    return ["--workers", str(workers), *WORKER, "--log-directory", str(tmp_path / "logs"),
            "--scheduler-file", str(tmp_path / "scheduler.json"), f"--job-extra=--comment={tag}",
            "--wait-timeout", "600", *extra]  # fmt: skip


def worker_jobs(tag: str) -> list[str]:
    return sh.running_jobs(tag, "reattn-batch-worker")


def no_traceback(text: str) -> None:
    for bad in ("Traceback", "Task exception was never retrieved", "FuturesCancelledError"):
        assert bad not in text, text[-4000:]


# --- launch.py: runs, worker loss, resume, adapt ---


def test_launcher_run_equals_the_embedded_run_and_survives_a_cancelled_worker_job(
    scene, clean, tag, tmp_path
):
    """Two CPU worker jobs (`--gres none`) that advertise no GPU and run the model on the
    job's cores, without Dask's OMP_NUM_THREADS=1 and MALLOC_TRIM_THRESHOLD_; one of them
    is cancelled mid-run. The run completes on the other, and the store equals the
    embedded run's bit for bit (labels and run fingerprint). The scheduler file is gone at
    the end, and so are the jobs."""
    import cloudpickle
    from distributed import Client

    cloudpickle.register_pickle_by_value(sh)  # the workers cannot import the tests
    store, scheduler_file = tmp_path / "out.zarr", tmp_path / "scheduler.json"
    run = sh.launch(tmp_path, [*launcher_args(tmp_path, tag, 2), "--",
                               *run_args(scene, store)], env())  # fmt: skip
    try:
        sh.wait_until(lambda: scheduler_file.is_file() or run.proc.poll() is not None, 300,
                      "the scheduler file")  # fmt: skip
        assert run.proc.poll() is None, run.err_text()[-4000:]
        # over TLS, with the launch's throwaway certificates beside the scheduler file
        certs = tmp_path / "scheduler.tls"
        assert stat.S_IMODE(certs.stat().st_mode) == 0o700
        security = TlsFiles(*(str(certs / n) for n in ("ca.crt", "tls.crt", "tls.key"))).security()
        with Client(scheduler_file=str(scheduler_file), security=security,
                    timeout="30s") as client:  # fmt: skip
            assert client.scheduler.address.startswith("tls://"), client.scheduler.address
            seen = client.run(sh.worker_environment)
            resources = [w["resources"] for w in client.scheduler_info(n_workers=-1)["workers"]
                         .values()]  # fmt: skip
        victims = worker_jobs(tag)
        assert len(seen) == 2 and resources == [{}, {}], (seen, resources)
        assert {w["slurm_job"] for w in seen.values()} == set(victims)
        for worker in seen.values():
            assert worker["OMP_NUM_THREADS"] == str(CPUS) and worker["torch_threads"] == CPUS
            assert worker["MALLOC_TRIM_THRESHOLD_"] is None
        sh.wait_until(lambda: done_blocks(store) >= 1 or run.proc.poll() is not None, 400,
                      "a finished block")  # fmt: skip
        assert run.proc.poll() is None and done_blocks(store) < BLOCKS, run.err_text()[-4000:]
        subprocess.run(["scancel", victims[0]], check=True, timeout=60)
        rc = run.wait(LAUNCH_TIMEOUT)
    finally:
        run.kill()
    assert rc == 0, run.err_text()[-4000:]
    no_traceback(run.err_text())
    assert sh.jobs(tag)[victims[0]][0] == "CANCELLED"
    same_store(store, clean)
    assert not scheduler_file.exists() and not certs.exists()
    assert sh.wait_until(lambda: not sh.live_jobs(tag), 60, "the worker jobs to end")


def test_all_workers_cancelled_ends_with_one_line_then_a_new_launcher_resumes(
    scene, clean, tag, tmp_path
):
    """Every worker job cancelled (the first launcher has one): the run ends after
    --no-worker-timeout with its one line, and the launcher's last line says how to finish. A
    second launcher (`--adapt`, one worker) with `--resume` finishes the store; its worker
    job, cancelled too, is replaced."""
    store = tmp_path / "out.zarr"
    first = sh.launch(tmp_path / "first", [*launcher_args(tmp_path / "first", tag, 1), "--",
                      *run_args(scene, store, "--no-worker-timeout", "5")], env())  # fmt: skip
    try:
        sh.wait_until(lambda: done_blocks(store) >= 1 or first.proc.poll() is not None, 400,
                      "a finished block")  # fmt: skip
        victims = worker_jobs(tag)
        assert first.proc.poll() is None and len(victims) == 1, first.err_text()[-4000:]
        subprocess.run(["scancel", *victims], check=True, timeout=60)
        rc = first.wait(LAUNCH_TIMEOUT)
    finally:
        first.kill()
    err = first.err_text()
    assert rc != 0, err[-4000:]
    no_traceback(err)
    (run_line,) = first.lines(ERROR_PREFIX)
    assert "no Dask worker" in run_line, run_line
    last = err.strip().splitlines()[-1]
    assert last.startswith("launch.py: error: the run ended with status 2"), err[-4000:]
    assert "--resume" in last
    partial = done_blocks(store)
    assert 1 <= partial < BLOCKS and attrs(store).get("complete") is not True

    tag2 = sh.new_tag()
    # Dask gives a lost worker's job up after distributed.deploy.lost-worker-timeout (15 s
    # by default), then adapt submits its replacement: 3 s keeps the test short
    second = sh.launch(tmp_path / "second",
                       [*launcher_args(tmp_path / "second", tag2, 1, "--adapt"), "--",
                        *run_args(scene, store, "--resume")],
                       env(DASK_DISTRIBUTED__DEPLOY__LOST_WORKER_TIMEOUT="3s"))  # fmt: skip
    try:
        sh.wait_until(lambda: done_blocks(store) > partial or second.proc.poll() is not None,
                      400, "a block finished by the new worker")  # fmt: skip
        (victim,) = worker_jobs(tag2)
        assert second.proc.poll() is None and done_blocks(store) < BLOCKS
        subprocess.run(["scancel", victim], check=True, timeout=60)
        rc = second.wait(LAUNCH_TIMEOUT)
    finally:
        second.kill()
        sh.cancel_tag(tag2)
    assert rc == 0, second.err_text()[-4000:]
    submitted = sh.jobs(tag2)
    assert len(submitted) >= 2, submitted  # the cancelled job was replaced (adapt)
    same_store(store, clean)
    assert attrs(store)["blocks_done_before_last_run"] >= partial


LAUNCHER_JOB = """#!/usr/bin/env bash
# the launcher inside a SLURM job of its own, as on a cluster (a small CPU job)
"{python}" "{launcher}" "$@" &
pid=$!
trap 'kill -TERM "$pid" 2>/dev/null' TERM
rc=0
while kill -0 "$pid" 2>/dev/null; do wait "$pid"; rc=$?; done
echo "$rc" > "{rc_file}"
"""


def test_cancelled_launcher_job_stops_cleanly_and_leaves_a_resumable_store(
    scene, clean, tag, tmp_path
):
    """The launcher's own job cancelled mid-run (SIGTERM, as at its walltime): one line, a
    non-zero exit, the worker jobs cancelled, no scheduler file, and a store that
    `--resume` finishes equal to a clean run."""
    store, scheduler_file = tmp_path / "out.zarr", tmp_path / "scheduler.json"
    rc_file, output = tmp_path / "launcher.rc", tmp_path / "launcher-job.out"
    script = tmp_path / "launcher.sh"
    script.write_text(LAUNCHER_JOB.format(python=sys.executable, launcher=sh.LAUNCHER,
                                          rc_file=rc_file))  # fmt: skip
    submitted = subprocess.run(
        ["sbatch", "--parsable", "-J", "reattn-launcher", f"--comment={tag}", "-c", "1",
         "--mem=1G", "-o", str(output), str(script), *launcher_args(tmp_path, tag, 1), "--",
         *run_args(scene, store)],
        capture_output=True, text=True, env=env(), cwd=tmp_path, timeout=60,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip().split(";")[0]
    sh.wait_until(lambda: done_blocks(store) >= 1 or rc_file.exists(), 400, "a finished block")
    assert not rc_file.exists(), output.read_text()[-4000:]
    assert scheduler_file.exists() and done_blocks(store) < BLOCKS, output.read_text()[-4000:]
    subprocess.run(["scancel", job], check=True, timeout=60)
    sh.wait_until(rc_file.exists, 120, "the launcher to end")
    text = output.read_text(errors="replace")
    assert rc_file.read_text().strip() == "143", text[-4000:]  # 128 + SIGTERM
    no_traceback(text)
    last = [ln for ln in text.splitlines() if ln.startswith("launch.py:")][-1]
    assert last.startswith("launch.py: error: stopped by SIGTERM") and "--resume" in last, last
    assert not scheduler_file.exists(), text[-4000:]
    assert not (tmp_path / "scheduler.tls").exists()  # nor its throwaway certificates
    sh.wait_until(lambda: not sh.live_jobs(tag, "reattn-batch-worker"), 60,
                  "the worker jobs to be cancelled")  # fmt: skip
    partial = done_blocks(store)
    assert attrs(store).get("complete") is not True
    ok(cli(*run_args(scene, store, "--resume"), timeout=LAUNCH_TIMEOUT))
    same_store(store, clean)
    assert attrs(store)["blocks_done_before_last_run"] == partial


# --- launch.py: worker jobs that cannot run end it at once ---


@pytest.mark.parametrize(
    ("request_", "says"),
    [
        (["--gres", "nosuch:1"], "sbatch: error: Invalid generic resource (gres) specification"),
        (
            ["--gres", "gpu:99"],
            "sbatch: error: Batch job submission failed: Requested node "
            "configuration is not available",
        ),
        (["--memory", "MEMORY"], "sbatch: error: Memory specification can not be satisfied"),
        (["--cpus-per-worker", "CPUS+1"], "pending with reason PartitionConfig"),
    ],
    ids=["bad-gres", "too-many-gpus", "too-much-memory", "too-many-cpus"],
)
def test_a_worker_job_slurm_cannot_run_ends_the_launcher_at_once(request_, says, tag, tmp_path):
    """Not the whole --wait-timeout (3600 s here; the test's own limit is far shorter):
    one line with sbatch's (or squeue's) words, no traceback, nothing left queued."""
    request_ = [{"MEMORY": f"{sh.node_memory_mb() + 1024}MiB",
                 "CPUS+1": str(sh.node_cpus() + 1)}.get(a, a) for a in request_]  # fmt: skip
    scheduler_file = tmp_path / "scheduler.json"
    args = ["--workers", "1", "--gres", "none", "--cpus-per-worker", "1", "--memory", "1GiB",
            "--interface", "lo", "--dashboard-address", ":0", f"--job-extra=--comment={tag}",
            "--scheduler-file", str(scheduler_file), "--wait-timeout", "3600", *request_,
            "--", "run", str(tmp_path / "never-read.tif"), *CLASSES]  # fmt: skip
    run = sh.launch(tmp_path, args, env())
    rc = run.wait(180)
    err = run.err_text()
    assert rc == 1, err[-4000:]
    no_traceback(err)
    last = err.strip().splitlines()[-1]
    assert last.startswith("launch.py: error: ") and says in last, err[-4000:]
    assert not scheduler_file.exists() and not (tmp_path / "scheduler.tls").exists()
    assert sh.wait_until(lambda: not sh.live_jobs(tag), 60, "no job left queued")


# --- launch.py: `job run` ---


def test_job_run_through_the_launcher_on_fake_gpu_workers(tag, tmp_path):
    """A regional job takes its cluster from its spec (`cluster: {scheduler_file: F}`): the
    launcher writes its scheduler file there. The worker jobs ask for a (fake) GPU each,
    so they advertise GPU=1 and the model tasks request it (the tiny model on the CPU)."""
    (tmp_path / "scenes").mkdir()
    write_scene(tmp_path / "scenes" / "a.tif", 320, 256, seed=1)
    write_scene(tmp_path / "scenes" / "b.tif", 256, 320, seed=2)
    spec = tmp_path / "region.yaml"
    spec.write_text(
        "name: slurm-region\nscenes:\n  glob: scenes/*.tif\nclasses: building,road,water\n"
        + TINY_MODEL_YAML
        + "output_root: labels\ncluster:\n  scheduler_file: dask/scheduler.json\n"
    )
    args = ["--workers", "1", "--gres", "gpu:1", "--cpus-per-worker", "1", "--memory", "2GiB",
            "--interface", "lo", "--dashboard-address", ":0", f"--job-extra=--comment={tag}",
            "--log-directory", str(tmp_path / "logs"), "--wait-timeout", "600",
            "--", "job", "run", str(spec)]  # fmt: skip
    run = sh.launch(tmp_path, args, env())
    rc = run.wait(LAUNCH_TIMEOUT)
    assert rc == 0, run.err_text()[-4000:]
    assert "waiting for 1 of 1 GPU workers" in run.out_text()
    for name in ("a", "b"):
        assert attrs(tmp_path / "labels" / f"{name}.labels.zarr")["complete"] is True
    assert not (tmp_path / "dask" / "scheduler.json").exists()


def test_launcher_refuses_a_job_spec_without_a_scheduler_file(tmp_path, capsys):
    spec = tmp_path / "region.yaml"
    spec.write_text("scenes: [a.tif]\nclasses: a,b\noutput_root: out\n")
    module = importlib.util.spec_from_file_location("slurm_launch", sh.LAUNCHER)
    launcher = importlib.util.module_from_spec(module)
    module.loader.exec_module(launcher)
    with pytest.raises(SystemExit) as exit_info:
        launcher.parse_args(["--", "job", "run", str(spec)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("launch.py: error: job spec") and "scheduler_file" in err, err


# --- reattn-batch.sbatch: one allocation holds scheduler, workers and run ---


def recipe_env(tmp_path: Path, workdir: Path, **extra: str) -> dict[str, str]:
    shims = sh.shim_bin(tmp_path / "bin")
    path = f"{shims}:{Path(sys.executable).parent}:{os.environ['PATH']}"
    return env(PATH=path, REATTN_BATCH_WORKDIR=str(workdir), SCHEDULER_OPTS="--host 127.0.0.1",
               WORKER_OPTS="--host 127.0.0.1 --no-dashboard", DASK_LOGGING__DISTRIBUTED="info",
               **extra)  # fmt: skip


#: Overrides of the recipe's #SBATCH lines for this node: two tasks, one core each.
RECIPE_ALLOCATION = ["--nodes=1", "--ntasks=2", "--ntasks-per-node=2", "--cpus-per-task=1",
                     "--mem-per-cpu=1G", "--time=00:20:00"]  # fmt: skip


def sbatch_recipe(tag: str, workdir: Path, environ: dict, gpus: int, *run: str) -> str:
    workdir.mkdir(parents=True, exist_ok=True)
    submitted = subprocess.run(
        ["sbatch", "--parsable", f"--comment={tag}", *RECIPE_ALLOCATION,
         f"--gpus-per-task={gpus}", "-o", str(workdir / "job.out"), str(sh.SBATCH_RECIPE), *run],
        capture_output=True, text=True, env=environ, cwd=workdir, timeout=60,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    return submitted.stdout.strip().split(";")[0]


def job_certificates(workdir: Path, job: str) -> TlsFiles:
    """The allocation's throwaway TLS certificates (reattn-batch.sbatch's default), read
    while it runs: a private folder and key on the shared filesystem."""
    folder = workdir / f"reattn-batch-tls-{job}"
    files = TlsFiles(*(str(folder / n) for n in ("ca.crt", "tls.crt", "tls.key")))
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE(Path(files.key).stat().st_mode) == 0o600
    return files


def recipe_workers(workdir: Path, job: str, tag: str) -> tuple[list[dict], list[dict]]:
    """(resources, environment) of the allocation's two workers, read while it runs; its
    scheduler is on tls:// and refuses a plain TCP client."""
    import cloudpickle
    from distributed import Client
    from distributed.security import Security

    cloudpickle.register_pickle_by_value(sh)
    scheduler_file = workdir / f"reattn-batch-scheduler-{job}.json"
    sh.wait_until(lambda: scheduler_file.is_file() or ended(tag, job), 300,
                  f"the scheduler file of job {job}")  # fmt: skip
    address = json.loads(scheduler_file.read_text())["address"]
    assert address.startswith("tls://127.0.0.1:"), address
    with pytest.raises(OSError):
        Client("tcp://" + address.removeprefix("tls://"), security=Security(), timeout="10s")
    security = job_certificates(workdir, job).security()
    with Client(scheduler_file=str(scheduler_file), security=security, timeout="30s") as client:
        client.wait_for_workers(2, timeout=300)
        workers = client.scheduler_info(n_workers=-1)["workers"]
        assert all(a.startswith("tls://") for a in workers), list(workers)
        workers = workers.values()
        return [w["resources"] for w in workers], list(client.run(sh.worker_environment).values())


def ended(tag: str, job: str) -> str | None:
    state = sh.jobs(tag).get(job, ("", ""))[0]
    return None if state in sh.LIVE_STATES or not state else state


def test_sbatch_recipe_two_allocations_at_once_on_one_node(tag, tmp_path):
    """Free ports (no fixed 8786/8787), so two allocations share the node, each over tls://
    with throwaway certificates of its own (a private folder, removed at the end), its
    scheduler refusing plain TCP. GPUs per task follow the allocation: `--gpus-per-task=0`
    gives CPU workers (no GPU resource, the task's cores, no Dask OMP/MALLOC defaults),
    `--gpus-per-task=1` (fake GPUs) workers that advertise GPU=1. Both runs complete, with
    the same labels."""
    scene = write_scene(tmp_path / "scene.tif", 320, 256)
    gpus = {"cpu": 0, "gpu": 1}
    jobs = {
        name: sbatch_recipe(tag, tmp_path / name, recipe_env(tmp_path, tmp_path / name), n,
                            str(scene), *CLASSES, *TINY, "--out", str(tmp_path / name / "out.zarr"))
        for name, n in gpus.items()
    }  # fmt: skip
    sh.wait_until(lambda: len(sh.running_jobs(tag)) == 2, 300, "both allocations running at once")
    seen = {name: recipe_workers(tmp_path / name, job, tag) for name, job in jobs.items()}
    cas = {name: Path(job_certificates(tmp_path / name, job).ca).read_bytes()
           for name, job in jobs.items()}  # fmt: skip
    assert cas["cpu"] != cas["gpu"]  # one CA per allocation
    states = {n: sh.wait_until(lambda j=j: ended(tag, j), LAUNCH_TIMEOUT, f"job {j} to end")
              for n, j in jobs.items()}  # fmt: skip
    for name, state in states.items():
        out = (tmp_path / name / "job.out").read_text(errors="replace")
        assert state == "COMPLETED", out[-4000:]
        no_traceback(out)
        assert attrs(tmp_path / name / "out.zarr")["complete"] is True
        assert not (tmp_path / name / f"reattn-batch-scheduler-{jobs[name]}.json").exists()
        assert not (tmp_path / name / f"reattn-batch-tls-{jobs[name]}").exists()
    (cpu_resources, cpu_env), (gpu_resources, gpu_env) = seen["cpu"], seen["gpu"]
    assert cpu_resources == [{}, {}] and gpu_resources == [{"GPU": 1}, {"GPU": 1}], seen
    for worker in cpu_env:
        assert worker["OMP_NUM_THREADS"] == "1" and worker["MALLOC_TRIM_THRESHOLD_"] is None
        assert not worker["CUDA_VISIBLE_DEVICES"]
    assert sorted(w["CUDA_VISIBLE_DEVICES"] for w in gpu_env) == ["0", "1"], gpu_env
    assert {w["slurm_job"] for w in cpu_env + gpu_env} == set(jobs.values())
    assert np.array_equal(
        labels(tmp_path / "cpu" / "out.zarr"), labels(tmp_path / "gpu" / "out.zarr")
    )


@pytest.mark.parametrize(
    ("broken", "says"),
    [
        ({"WORKER_OPTS": "--nthreads many"}, "srun ended with 0 of 2 workers joined"),
        ({"SCHEDULER_OPTS": "--no-such-option"}, "the Dask scheduler ended at start"),
    ],
    ids=["srun-fails", "scheduler-fails"],
)
def test_sbatch_recipe_failing_workers_or_scheduler_end_it_with_one_line(
    broken, says, tag, tmp_path
):
    """Not a wait of 1800 s (the test's own limit is far shorter)."""
    environ = recipe_env(tmp_path, tmp_path) | broken
    job = sbatch_recipe(tag, tmp_path, environ, 0, str(tmp_path / "never-read.tif"), *CLASSES)
    # far below the 120 s the recipe used to wait for a dead scheduler's file (1800 s for
    # workers that never come): a hang guard, not a timing assert
    state = sh.wait_until(lambda: ended(tag, job), 100, "the allocation to end")
    out = (tmp_path / "job.out").read_text(errors="replace")
    assert state == "FAILED", out[-4000:]
    errors = [ln for ln in out.splitlines() if ln.startswith("reattn-batch.sbatch: error:")]
    assert len(errors) == 1 and says in errors[0], out[-4000:]
    no_traceback(out)
    assert not list(tmp_path.glob("reattn-batch-scheduler-*.json"))
    assert not list(tmp_path.glob("reattn-batch-tls-*"))


def test_single_node_script_writes_the_real_cpu_layout(slurm):
    """The node line is `slurmd -C`'s layout (a drained node would not take jobs)."""
    path = f"{os.environ['PATH']}:{sh.SBIN}"
    layout = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, timeout=60,
                            env=os.environ | {"PATH": path})  # fmt: skip
    first = layout.stdout.splitlines()[0].split(" ", 1)[1]
    node = next(ln for ln in slurm.read_text().splitlines() if ln.startswith("NodeName="))
    assert first in node, (first, node)
    state = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True,
                           timeout=60).stdout.split()  # fmt: skip
    assert state and state[0] in ("idle", "mixed", "allocated"), state


def test_ci_installs_slurm_so_these_tests_run():
    """CI must not go green by skipping them: .ci/run installs the packages."""
    ci = (sh.REPO / ".ci" / "run").read_text()
    assert "packages+=(slurm-wlm munge)" in ci and "/usr/sbin/slurmctld" in ci
