"""Issue 19 item 8: a scheduler's preemption (SLURM, Kubernetes: SIGTERM, then SIGKILL
after a grace period) and Ctrl-C (SIGINT) end a run promptly with ONE line, its finished
blocks recorded, and `--resume` completes it bit for bit.

Real `reattn-batch` subprocesses (tests/cli_helpers.py) get real signals: SIGTERM to the
whole process group (SLURM signals every process of a job, the embedded cluster's workers
too), SIGINT to the group (Ctrl-C at a terminal), SIGTERM to the run alone and again during
its clean-up (Kubernetes signals a container's first process; the SLURM launcher forwards
SIGTERM), against an embedded LocalCluster and an existing `dask scheduler`, for `run` and
`job run`; then SIGKILL, where no handler runs. Before issue 19 a SIGTERM killed the run at
once (status -15, no line, records of the last second lost) and SIGINT printed Dask's
warnings and the workers' KeyboardInterrupt tracebacks.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from pathlib import Path

import cli_helpers as h
import numpy as np
import pytest
from cluster_helpers import dask_processes

from reattn_batch.run.stop import Stop, stop_on_signals

pytestmark = pytest.mark.timeout(400)

BLOCK = ["--block-size", "512"]
BLOCKS = 6  # 1536 x 1024 px in blocks of 512
#: Seconds from the signal to the end of the run: well within a 30 s grace period, on this
#: loaded 2-core machine (it took 3-6 s here with a load average of 10)
GRACE_S = 20
STOPPED = re.compile(r"^reattn-batch: stopped by (SIG[A-Z]+): (\d+) of (\d+) blocks done and "
                     r"recorded in (.+); rerun with --resume to finish$")  # fmt: skip
#: What must not reach stderr: tracebacks, Dask's own log lines, the workers' interrupts
NOISE = re.compile(r"Traceback|distributed\.|KeyboardInterrupt|CancelledError|Worker process")


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    return {"REATTN_BATCH_CACHE": str(tmp_path_factory.getbasetemp() / "cache")}


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    return h.write_scene(tmp_path_factory.mktemp("scene") / "scene.tif", 1536, 1024)


@pytest.fixture(scope="module")
def clean(scene, env, tmp_path_factory) -> np.ndarray:
    """The labels of an uninterrupted run."""
    store = tmp_path_factory.mktemp("clean") / "clean.zarr"
    h.ok(h.cli("run", scene, *h.CLASSES, *h.TINY, *BLOCK, "--out", store, extra_env=env))
    return h.labels(store)


def _run(scene, store, *extra) -> list[object]:
    return ["run", scene, *h.CLASSES, *h.TINY, *BLOCK, "--out", store, *extra]


def _stop_after_a_block(proc, store, signum: int, *, group: bool, twice: bool = False):
    """Once a block is recorded, send ``signum`` (to the process group or the run alone;
    ``twice``: again 0.5 s later, during the clean-up); the run's result, timed from the
    first signal."""
    h.wait_for(lambda: h.done_blocks(store) >= 1, 300, "a first recorded block", proc)
    send = os.killpg if group else os.kill
    started = time.monotonic()
    send(proc.pid, signum)
    if twice:
        time.sleep(0.5)
        if proc.poll() is None:
            send(proc.pid, signum)
    return h.finish(proc, timeout=GRACE_S + 40, started=started)


def _one_stop_line(result: h.Result, signum: int, store: Path) -> int:
    """Assert: ended within the grace period with status 128 + signum, one line on stderr
    that says how many blocks are recorded, no traceback or Dask log; returns that count,
    which the store's records match (they were flushed)."""
    assert not result.timed_out, f"still running {result.seconds:.0f} s after the signal"
    assert result.seconds < GRACE_S, f"ended {result.seconds:.1f} s after the signal"
    assert result.rc == 128 + signum, (result.rc, result.stderr[-3000:])
    assert not NOISE.search(result.stderr), result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("reattn-batch:")]
    assert len(lines) == 1, result.stderr[-3000:]
    match = STOPPED.match(lines[0])
    assert match, lines[0]
    name, done, total, where = match.groups()
    assert name == signal.Signals(signum).name and int(total) == BLOCKS
    assert Path(where) == store.absolute()
    assert 1 <= int(done) < BLOCKS, lines[0]
    assert h.done_blocks(store) == int(done)  # every finished block's record is written
    return int(done)


def _resume_completes_it(scene, store, env, clean, done: int, *extra) -> None:
    h.ok(h.cli(*_run(scene, store, "--resume", *extra), extra_env=env))
    attrs = h.attrs(store)
    assert attrs["complete"] is True and attrs["blocks_computed_last_run"] == BLOCKS - done
    assert np.array_equal(h.labels(store), clean)


CASES = {
    "sigterm-to-the-group (SLURM)": (signal.SIGTERM, True, False),
    "sigint-to-the-group (Ctrl-C)": (signal.SIGINT, True, False),
    "sigterm-to-the-run-twice (Kubernetes, a repeated signal)": (signal.SIGTERM, False, True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_signal_stops_a_run_with_one_line_and_resume_finishes_it(
    case, scene, clean, env, tmp_path
):
    signum, group, twice = CASES[case]
    store = tmp_path / "s.zarr"
    proc = h.start(*_run(scene, store), extra_env=env)
    result = _stop_after_a_block(proc, store, signum, group=group, twice=twice)
    done = _one_stop_line(result, signum, store)
    assert h.attrs(store).get("complete") is not True
    _resume_completes_it(scene, store, env, clean, done)


def test_sigterm_stops_a_run_on_an_existing_scheduler(scene, env, tmp_path):
    """The run alone gets SIGTERM (the SLURM launcher forwards it; a Kubernetes driver pod):
    its tasks are cancelled on the scheduler, which lives on, and a resume there completes
    the store, equal to a clean run on the same workers (whose torch threads may differ
    from the embedded cluster's, and with them the last bits of the logits)."""
    store, reference = tmp_path / "s.zarr", tmp_path / "clean.zarr"
    worker = ("--nthreads", "1")
    with dask_processes(tmp_path / "dask", n_workers=1, worker_args=worker, env=env) as procs:
        on = ("--scheduler-file", procs.scheduler_file)
        h.ok(h.cli(*_run(scene, reference, *on), extra_env=env))
        proc = h.start(*_run(scene, store, *on), extra_env=env)
        result = _stop_after_a_block(proc, store, signal.SIGTERM, group=False)
        done = _one_stop_line(result, signal.SIGTERM, store)
        _resume_completes_it(scene, store, env, h.labels(reference), done, *on)


JOB_SPEC = (
    """\
scenes:
  list: [{scene}]
classes: building,road,water,tree
"""
    + h.TINY_MODEL_YAML
    + """\
run:
  block_size: 512
output_root: {root}
cluster:
  local: {{workers: 1}}
"""
)


def test_sigterm_stops_a_job_with_one_line_and_a_rerun_finishes_it(scene, clean, env, tmp_path):
    root = tmp_path / "labels"
    spec = tmp_path / "job.yaml"
    spec.write_text(JOB_SPEC.format(scene=scene, root=root))
    store = root / "scene.labels.zarr"
    proc = h.start("job", "run", spec, extra_env=env)
    result = _stop_after_a_block(proc, store, signal.SIGTERM, group=True)
    assert not result.timed_out and result.seconds < GRACE_S, result.seconds
    assert result.rc == 143, (result.rc, result.stderr[-3000:])
    assert not NOISE.search(result.stderr), result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("reattn-batch:")]
    assert len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith("reattn-batch: stopped by SIGTERM: 0 of 1 scenes ended"), lines
    done = h.done_blocks(store)
    assert 1 <= done < BLOCKS
    h.ok(h.cli("job", "run", spec, extra_env=env))
    (entry,) = json.loads((root / "summary.json").read_text())["scenes"]
    assert entry["status"] == "resumed", entry
    assert h.attrs(store)["blocks_computed_last_run"] == BLOCKS - done
    assert np.array_equal(h.labels(store), clean)


def _blocked_opening_a_fifo(pid: int, tid: int | None = None) -> bool:
    """Whether thread ``tid`` (default: the main thread) of process ``pid`` waits in the
    kernel for the other end of a FIFO it opens (Linux: its wchan)."""
    try:
        return Path(f"/proc/{pid}/task/{tid or pid}/wchan").read_text() == "wait_for_partner"
    except OSError:
        return False


def test_sigterm_while_a_job_writes_its_summary_says_what_ended(scene, env, tmp_path):
    """A SIGTERM after the job's scenes ended (writing the index or the summary) escaped
    the job's own handling and printed "nothing was computed" (false: a scene was mapped)
    with no summary. Now the line says how many scenes ended and that the summary was not
    written, and running the job again writes it. The job is held in its summary write by
    a real wait: its temporary summary file is a FIFO, which blocks until read."""
    root = tmp_path / "labels"
    root.mkdir()
    spec = tmp_path / "job.yaml"
    small = h.write_scene(tmp_path / "small.tif", 300, 260)
    spec.write_text(JOB_SPEC.format(scene=small, root=root))
    proc = h.start("job", "run", spec, extra_env=env)
    try:
        os.mkfifo(root / f".summary.json.tmp-{proc.pid}")  # what write_json opens (index.py)
        h.wait_for(lambda: _blocked_opening_a_fifo(proc.pid), 300, "the summary write", proc)
        os.killpg(proc.pid, signal.SIGTERM)
        result = h.finish(proc, timeout=60)
    finally:
        h.kill_group(proc)
    assert result.rc == 143 and not NOISE.search(result.stderr), result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("reattn-batch:")]
    assert len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith("reattn-batch: stopped by SIGTERM: 1 of 1 scenes ended (see "), lines
    assert "summary" in lines[0] and "not written" in lines[0], lines
    (entry,) = json.loads((root / "index.json").read_text())["scenes"]
    assert entry["status"] == "done" and not (root / "summary.json").exists()
    h.ok(h.cli("job", "run", spec, extra_env=env))
    (entry,) = json.loads((root / "summary.json").read_text())["scenes"]
    assert entry["status"] == "skipped", entry


def test_a_stopped_in_process_job_gives_the_callers_handlers_back(tmp_path, capsys):
    """A program (a notebook, Airflow's PythonOperator, a test) that runs the command line
    in its own process gets its SIGTERM/SIGINT handlers back after a run was stopped: they
    were left ignored, so its Ctrl-C was lost for good. The job here has one scene that
    fails at once (an empty file: no cluster), and is stopped by a real SIGTERM while it
    writes its summary (a FIFO, as above)."""
    from reattn_batch.cli import main

    (tmp_path / "empty.tif").write_bytes(b"")
    root = tmp_path / "labels"
    root.mkdir()
    spec = tmp_path / "job.yaml"
    spec.write_text(JOB_SPEC.format(scene=tmp_path / "empty.tif", root=root))
    fifo = root / f".summary.json.tmp-{os.getpid()}"
    os.mkfifo(fifo)
    caught: list[int] = []

    def mine(signum, frame) -> None:
        caught.append(signum)

    def stop_when_blocked() -> None:
        main_thread = threading.main_thread().native_id
        deadline = time.monotonic() + 120
        while not _blocked_opening_a_fifo(os.getpid(), main_thread):
            if time.monotonic() > deadline:  # never blocked there: let it go on
                os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
                return
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for each in before:
            signal.signal(each, mine)
        threading.Thread(target=stop_when_blocked, daemon=True).start()
        capsys.readouterr()
        with pytest.raises(SystemExit) as info:
            main(["job", "run", str(spec)])
        after = {s: signal.getsignal(s) for s in before}
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C: the caller's handler runs again
        threading.Event().wait(0.2)
    finally:
        for each, handler in before.items():
            signal.signal(each, handler)
    assert info.value.code == 143
    assert after == {signal.SIGTERM: mine, signal.SIGINT: mine} and caught == [signal.SIGINT]
    err = [line for line in capsys.readouterr().err.splitlines() if "reattn-batch:" in line]
    assert len(err) == 1 and err[0].startswith("reattn-batch: stopped by SIGTERM: 1 of 1 "), err


def test_after_sigkill_records_are_never_ahead_of_the_data_and_resume_finishes_it(
    scene, clean, env, tmp_path
):
    """SIGKILL (a grace period ran out): no handler runs. Every block with a record holds
    its final labels, and a resume completes the store bit for bit."""
    store = tmp_path / "s.zarr"
    proc = h.start(*_run(scene, store), extra_env=env)
    h.wait_for(lambda: h.done_blocks(store) >= 1, 300, "a first recorded block", proc)
    os.killpg(proc.pid, signal.SIGKILL)
    h.finish(proc, timeout=30)
    records = np.asarray(h.group(store)["block_done"][:])
    labels = h.labels(store)
    assert 1 <= int(records.sum()) < BLOCKS
    for row, col in zip(*np.nonzero(records), strict=True):
        window = np.s_[row * 512 : (row + 1) * 512, col * 512 : (col + 1) * 512]
        assert np.array_equal(labels[window], clean[window]), (row, col)
    _resume_completes_it(scene, store, env, clean, int(records.sum()))


# --------------------------------------------------------------- the context manager itself


def test_stop_on_signals_raises_once_then_ignores_and_restores_the_handlers():
    """Real signals to this process: the first raises Stop (a BaseException, so no
    ``except Exception`` takes it for an error), a second during the clean-up is ignored;
    the previous handlers come back when the ``with`` ends, with or without a signal."""
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    with stop_on_signals():
        assert signal.getsignal(signal.SIGTERM) is not before[signal.SIGTERM]
    assert {s: signal.getsignal(s) for s in before} == before

    cleaned = False
    with pytest.raises(Stop) as info:
        try:
            with stop_on_signals():
                try:
                    os.kill(os.getpid(), signal.SIGTERM)
                    threading.Event().wait(5)  # interrupted by the handler
                except Exception:  # noqa: BLE001 - must not catch a Stop
                    pytest.fail("Stop was caught as an Exception")
                finally:
                    os.kill(os.getpid(), signal.SIGINT)  # during the clean-up: ignored
                    threading.Event().wait(0.2)
                    cleaned = True
        finally:
            after = {s: signal.getsignal(s) for s in before}
            for each, handler in before.items():  # this test process goes on, whatever
                signal.signal(each, handler)
    assert info.value.signum == signal.SIGTERM and info.value.name == "SIGTERM" and cleaned
    assert after == before  # after a stop too (they stayed ignored: Ctrl-C lost for good)


def test_the_command_that_owns_its_process_keeps_the_signals_ignored_after_a_stop():
    """``restore_after_stop=False`` (the `reattn-batch` process, which exits once it has
    said it stopped): after a stop a repeated signal stays ignored up to the exit, so it
    cannot cut the last line short (a KeyboardInterrupt traceback, an exit by signal);
    without a stop the previous handlers come back as usual."""
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    with stop_on_signals(restore_after_stop=False):
        pass
    assert {s: signal.getsignal(s) for s in before} == before
    try:
        with pytest.raises(Stop), stop_on_signals(restore_after_stop=False):
            os.kill(os.getpid(), signal.SIGINT)
            threading.Event().wait(5)  # interrupted by the handler
        assert all(signal.getsignal(s) is not before[s] for s in before)
        os.kill(os.getpid(), signal.SIGINT)  # ignored: no KeyboardInterrupt
        os.kill(os.getpid(), signal.SIGTERM)  # ignored: the process does not end
        threading.Event().wait(0.2)
    finally:
        for each, handler in before.items():  # this test process goes on
            signal.signal(each, handler)


def test_the_python_api_installs_no_signal_handler(tmp_path, env, monkeypatch):
    """``reattn_batch.map_scene`` keeps the caller's SIGINT/SIGTERM handlers while it runs:
    only the command line enters ``stop_on_signals``."""
    import reattn_batch as rb

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    scene = h.write_scene(tmp_path / "one.tif", 300, 260)
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    seen: list[dict] = []
    running = threading.Event()
    running.set()

    def watch() -> None:
        while running.is_set():
            seen.append({s: signal.getsignal(s) for s in before})
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        rb.map_scene(scene, ["building", "road"], tmp_path / "one.zarr", clip_weights="random",
                     clip_model="ViT-T-16-test", upsampler="bilinear", device="cpu")  # fmt: skip
    finally:
        running.clear()
        watcher.join()
    assert len(seen) > 10 and all(handlers == before for handlers in seen)
