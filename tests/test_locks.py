"""Issue 19 items 4 and 7: one writer per store and per job output root (store/lock.py).

A run holds its store's lock file (``.<store>.lock`` beside it) from before it reads or
creates the store until it ends; a second run into the same store (``--overwrite``,
``--resume``, a job's scene) is refused with one line naming the holder, before touching
anything. The lock file is never followed through a symbolic link, is private (0600),
and is gone once its run ends; a killed holder's lock is taken over.

Holders are real processes (``python -c``) holding the lock through the project's own
functions; the concurrent runs are real ``python -m reattn_batch`` processes on a real
scheduler, their overlap made certain (not timed) as in tests/test_concurrent_runs.py.
No file system without ``flock`` exists on this test machine (ext4, tmpfs), so the
"unsupported" case is covered through the errno mapping only.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import cli_helpers as h
import cloudpickle
import numpy as np
import pytest
from cluster_helpers import dask_processes
from distributed import Client, Event

from reattn_batch.cli import main
from reattn_batch.store import lock
from reattn_batch.workers.errors import StoreError

pytestmark = pytest.mark.timeout(300)
BLOCK = ["--block-size", "512"]
HOLD_STORE = """\
import sys, time
from reattn_batch.store import lock_store
with lock_store(sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""
HOLD_JOB = """\
import sys, time
from pathlib import Path
from reattn_batch.regional.runner import _job_lock
with _job_lock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(600)
"""
JOB_LOCK = ".reattn-batch-job.lock"
SPEC = (
    "name: locks\nscenes:\n  glob: scenes/*.tif\nclasses: building,road\n"
    + h.TINY_MODEL_YAML
    + "run:\n  block_size: 512\noutput_root: labels\n"
    "cluster:\n  local: {workers: 1, threads_per_worker: 1}\n"
)


@contextlib.contextmanager
def holding(code: str, path: Path):
    """A process that holds a lock (``code`` takes it for ``path``) until the block ends."""
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env=h.env(), start_new_session=True,
    )  # fmt: skip
    try:
        line = proc.stdout.readline()
        assert line.strip() == "held", proc.stderr.read()[-3000:]
        yield proc
    finally:
        h.kill_group(proc)


def _one_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith(h.ERROR_PREFIX), err
    return err[0]


def _spec(tmp_path: Path, scenes: dict[str, int]) -> Path:
    """A job spec over ``scenes/NAME.tif`` (0: an empty file, else a synthetic scene)."""
    (tmp_path / "scenes").mkdir()
    for name, size in scenes.items():
        path = tmp_path / "scenes" / f"{name}.tif"
        h.write_scene(path, size, size - 40) if size else path.write_bytes(b"")
    spec = tmp_path / "job.yaml"
    spec.write_text(SPEC)
    return spec


# ----------------------------------------------------------------------------- the primitive


def test_only_held_errnos_mean_held_and_no_flock_is_named_as_such(tmp_path):
    """The errno mapping of a failed flock (a file system without flock cannot be made
    here: its errnos are mapped as the kernel would return them)."""
    for code in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        assert lock.lock_failure(code) == "held"
    for code in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
        assert lock.lock_failure(code) == "unsupported"
    for code in (errno.EIO, errno.EBADF, errno.EINTR, None):
        assert lock.lock_failure(code) is None
    path = tmp_path / ".s.zarr.lock"
    unsupported = lock.refusal(OSError(errno.ENOLCK, os.strerror(errno.ENOLCK)), path, "X", "")
    assert isinstance(unsupported, lock.LockUnsupported)
    assert str(unsupported).startswith(f"the file system of {path} does not support file locks")
    held = lock.refusal(OSError(errno.EAGAIN, "busy"), path, "X", "wait", "pid 7 on n1")
    assert isinstance(held, lock.LockHeld) and "held by pid 7 on n1" in str(held)
    io = lock.refusal(OSError(errno.EIO, os.strerror(errno.EIO)), path, "X", "")
    assert type(io) is StoreError and "in use" not in str(io)
    for error in (unsupported, held, io):
        assert "\n" not in str(error) and str(path) in str(error)


def test_a_reader_on_a_file_system_without_flock_goes_on_and_leaves_no_lock_file(
    tmp_path, monkeypatch, caplog
):
    """No file system here lacks flock, so flock answers as such a file system's kernel
    does (ENOLCK): the reader's shared lock lets the export go on (no run could lock
    there either) with a warning, a run is refused, and neither leaves a lock file."""

    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    store = tmp_path / "s.zarr"
    store.mkdir()
    monkeypatch.setattr(lock.fcntl, "flock", no_locks)
    with caplog.at_level(logging.WARNING):
        assert lock.share_store(store) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]
    assert any("has no file locks" in r.getMessage() for r in caplog.records)
    with pytest.raises(lock.LockUnsupported, match="does not support file locks"):
        lock.lock_store(store)  # a run there is refused at its start
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]  # and leaves no file


def test_store_is_busy_while_a_process_holds_it_and_a_killed_holder_is_taken_over(tmp_path):
    store = tmp_path / "s.zarr"
    assert not lock.store_is_busy(store) and not list(tmp_path.iterdir())  # creates nothing
    with holding(HOLD_STORE, store) as holder:
        path = lock.lock_path(store)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert path.read_text().startswith(f"pid {holder.pid} on ")
        assert lock.store_is_busy(store)
        with pytest.raises(lock.LockHeld, match=f"held by pid {holder.pid} on "):
            lock.lock_store(store)
        os.kill(holder.pid, signal.SIGKILL)  # no release: the file stays, the lock not
        holder.wait(timeout=30)
        assert path.exists() and not lock.store_is_busy(store)
        with lock.lock_store(store) as taken:
            assert path.read_text().startswith(f"pid {os.getpid()} on ")
            assert stat.S_IMODE(path.stat().st_mode) == 0o600 and taken.held
        assert not path.exists() and not lock.store_is_busy(store)  # removed on release


def test_a_symlink_planted_as_a_store_lock_is_refused_and_its_target_untouched(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    store = tmp_path / "s.zarr"
    lock.lock_path(store).symlink_to(victim)
    with pytest.raises(StoreError, match="symbolic link") as err:
        lock.lock_store(store)
    assert "\n" not in str(err.value)
    assert victim.read_text() == "precious" and lock.lock_path(store).is_symlink()
    assert not store.exists()


# ----------------------------------------------------------------------------- the job lock


def test_a_symlink_planted_as_the_job_lock_is_not_followed(tmp_path, capsys):
    """Item 7: the job lock was opened "a+" and truncated: a planted link's target lost."""
    spec = _spec(tmp_path, {"a": 0})
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / JOB_LOCK).symlink_to(victim)
    capsys.readouterr()
    assert h.job_status("run", spec) == 2
    line = _one_line(capsys)
    assert "symbolic link" in line and JOB_LOCK in line
    assert victim.read_text() == "precious\n"
    assert not (tmp_path / "labels" / "index.json").exists()  # the job did not start


def test_a_held_job_lock_names_its_holder_and_the_lock_file_is_private(tmp_path, capsys):
    spec = _spec(tmp_path, {"a": 0})
    root = tmp_path / "labels"
    root.mkdir()
    with holding(HOLD_JOB, root) as holder:
        assert stat.S_IMODE((root / JOB_LOCK).stat().st_mode) == 0o600
        capsys.readouterr()
        assert h.job_status("run", spec) == 2
        line = _one_line(capsys)
    assert "in use by another run" in line and f"pid {holder.pid} on " in line, line
    assert str(root / JOB_LOCK) in line
    assert sorted(p.name for p in root.iterdir()) == [JOB_LOCK]  # nothing else written


# ----------------------------------------------------------------------------- runs


@pytest.mark.parametrize(
    "mode", [[], ["--overwrite"], ["--resume"]], ids=["new", "overwrite", "resume"]
)
def test_a_run_into_a_store_another_run_holds_is_refused_before_anything(tmp_path, capsys, mode):
    scene = h.write_scene(tmp_path / "scene.tif", 300, 260)
    store = tmp_path / "s.zarr"
    with holding(HOLD_STORE, store) as holder:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            main(["run", str(scene), *h.CLASSES, *h.TINY, "--out", str(store), *mode])
        assert exit_info.value.code == 2
        line = _one_line(capsys)
    assert "in use by another run" in line and f"pid {holder.pid} on " in line, line
    assert "--out" in line and not store.exists()


def _others_waiting(dask_scheduler, me: str) -> int:
    """Run on the scheduler: how many clients other than ``me`` want some task."""
    wanting = {cs.client_key for ts in dask_scheduler.tasks.values() for cs in ts.who_wants}
    return len(wanting - {me})


@pytest.mark.timeout(600)
def test_two_runs_into_one_store_at_once(tmp_path, tmp_path_factory):
    """Item 4: a second ``run --out X --overwrite`` while the first writes X used to delete
    X under the first run's workers. Now it is refused with one line and the first run
    completes its store. The first run's blocks wait on the worker's only thread, held by
    a task of this test, until the second run has ended."""
    scene = h.write_scene(tmp_path / "scene.tif", 700, 600)  # 2 x 2 blocks of 512
    store = tmp_path / "s.zarr"
    cache = {"REATTN_BATCH_CACHE": str(tmp_path_factory.getbasetemp() / "cache")}
    with (
        dask_processes(tmp_path / "dask", n_workers=1, env=cache) as procs,
        Client(scheduler_file=str(procs.scheduler_file), timeout="60s") as client,
    ):
        client.wait_for_workers(1, timeout=120)
        cloudpickle.register_pickle_by_value(sys.modules[__name__])  # dask cannot import tests
        where = ["--scheduler-file", procs.scheduler_file]
        go = Event("reattn-test-locks-go", client=client)

        def hold() -> None:  # occupies the worker's only thread until `go`
            Event("reattn-test-locks-go").wait(timeout=300)

        holder = client.submit(hold, resources={"GPU": 1}, pure=False)
        first = h.start("run", scene, *h.CLASSES, *h.TINY, *BLOCK, *where, "--out", store)
        try:
            h.wait_for(
                lambda: client.run_on_scheduler(_others_waiting, me=client.id) >= 1,
                timeout=180,
                what="the first run to submit its blocks",
                proc=first,
            )
            second = h.cli("run", scene, *h.CLASSES, *h.TINY, *BLOCK, *where,
                           "--out", store, "--overwrite", timeout=120)  # fmt: skip
        finally:
            go.set()
        holder.result(timeout=60)
        result = h.finish(first, timeout=400)
    line = h.one_clean_error(second)
    assert "in use by another run" in line and f"pid {first.pid} on " in line, line
    h.ok(result)
    assert h.attrs(store)["complete"] is True and h.done_blocks(store) == 4
    labels = h.labels(store)
    assert labels.shape == (600, 700) and labels.max() <= 4 and len(np.unique(labels)) > 1
    assert not lock.lock_path(store).exists()


def test_a_job_scene_whose_store_another_run_holds_fails_alone(tmp_path):
    """A job takes each scene's store lock while it computes that scene; a store another
    run holds fails its scene with the holder's line, the others are mapped, and every
    lock the job took is gone when it ends."""
    spec = _spec(tmp_path, {"a": 300, "b": 300})
    root = tmp_path / "labels"
    with holding(HOLD_STORE, root / "b.labels.zarr") as holder:
        assert h.job_status("run", spec) == 1
        summary = json.loads((root / "summary.json").read_text())
        locks = sorted(p.name for p in root.iterdir() if p.name.endswith(".lock"))
    assert summary["counts"] == {"done": 1, "resumed": 0, "skipped": 0, "failed": 1}
    scenes = {Path(e["uri"]).stem: e for e in summary["scenes"]}
    assert scenes["a"]["status"] == "done" and scenes["a"]["complete"] is True
    message = scenes["b"]["message"]
    assert "in use by another run" in message and f"pid {holder.pid} on " in message
    # the job names its stores: its line says to run the job again, not to pass another out
    assert "run the job again" in message and "out=" not in message, message
    assert not (root / "b.labels.zarr").exists()
    assert locks == [".b.labels.zarr.lock"]  # the holder's; the job's own are released


# ----------------------------------------------------------------------------- links, readers


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, Path]:
    """A scene and the store a real run made of it (tests change copies of it)."""
    folder = tmp_path_factory.mktemp("finished")
    scene = h.write_scene(folder / "scene.tif", 300, 260)
    store = folder / "s.zarr"
    h.ok(h.cli("run", scene, *h.CLASSES, *h.TINY, "--out", store))
    return scene, store


def test_a_run_through_a_link_to_a_store_another_run_holds_is_refused(tmp_path, finished):
    """A store reached through a symbolic link had a lock of its own (named after the
    link): ``run --resume --out LINK`` went on while another run held the store itself.
    Now a run refuses a link at its ``--out`` (one line naming the link and its target),
    and the link's lock is the store's."""
    scene, made = finished
    real = tmp_path / "real.zarr"
    shutil.copytree(made, real)
    link = tmp_path / "link.zarr"
    link.symlink_to(real)
    before = h.tree_digest(real)
    with holding(HOLD_STORE, real) as holder:
        result = h.cli("run", scene, *h.CLASSES, *h.TINY, "--out", link, "--resume")
        line = h.one_clean_error(result)
        with pytest.raises(lock.LockHeld, match=f"held by pid {holder.pid} on "):
            lock.lock_store(link)
        assert lock.store_is_busy(link)
    assert "symbolic link" in line and str(link) in line and str(real) in line, line
    assert h.tree_digest(real) == before  # the store the other run holds is untouched
    assert lock.lock_path(link) == lock.lock_path(real)


def _reader_opened(fifo: Path, opened: list[int]) -> bool:
    """Whether a process has opened ``fifo`` for reading; if so, its write end is kept
    open in ``opened`` (the reader waits for the bytes until they are written)."""
    try:
        opened.append(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # no reader yet
            return False
        raise
    return True


def test_a_run_is_refused_while_an_export_copies_the_store_and_goes_on_after(tmp_path, finished):
    """``export`` checked once, at its start, that no run was writing the store: a run
    starting during the copy made a mix. Now the export holds a shared lock on the store's
    lock file while it copies, so a run starting then is refused with one line. Here the
    export is held mid-copy by a real wait: one chunk of the store is a FIFO, which it
    reads only once this test writes the chunk's bytes into it."""
    scene, made = finished
    store = tmp_path / "s.zarr"
    shutil.copytree(made, store)
    chunk = store / "labels" / "0" / "0"
    data = chunk.read_bytes()
    chunk.unlink()
    os.mkfifo(chunk)
    cog = tmp_path / "s.tif"
    export = h.start("export", store, "--cog", cog)
    opened: list[int] = []
    try:
        h.wait_for(lambda: _reader_opened(chunk, opened), 120, "the export to read", export)
        refused = h.cli("run", scene, *h.CLASSES, *h.TINY, "--out", store, "--resume")
        os.set_blocking(opened[0], True)
        os.write(opened[0], data)  # the export reads the chunk and finishes
        os.close(opened.pop())
        exported = h.finish(export, timeout=120)
    finally:
        for fd in opened:
            os.close(fd)
        h.kill_group(export)
    line = h.one_clean_error(refused)
    assert "being read by another command" in line and f"pid {export.pid} on " in line, line
    h.ok(exported)
    chunk.unlink()
    chunk.write_bytes(data)
    import rasterio

    with rasterio.open(cog) as src:
        assert np.array_equal(src.read(1), h.labels(store))  # one whole copy
    assert not lock.lock_path(store).exists()  # the export left no lock file
    h.ok(h.cli("run", scene, *h.CLASSES, *h.TINY, "--out", store, "--resume"))
