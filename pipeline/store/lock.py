"""One writer at a time: an exclusive lock on a small file, for a run's store and a job's
output root (the one lock primitive of reattn-batch).

A run holds ``.<store name>.lock``, a sibling of its store in the same folder, from before
it reads or creates the store until the run ends (done, failed or interrupted): the lock
exists before the store does and survives the store's rename into place or its
replacement by ``overwrite``. A regional job holds ``.reattn-batch-job.lock`` in its
output root, and each scene's store lock while that scene is computed.

How a lock is taken (:func:`hold`): the file is opened with ``O_CREAT | O_RDWR |
O_NOFOLLOW | O_CLOEXEC`` and mode 0600, so a symbolic link planted at its path is refused
(its target is never opened, let alone truncated); it must be a regular file with one
link; then ``flock(LOCK_EX | LOCK_NB)``. Once held, the file records its holder (pid, host,
start time), which a second run's refusal names. Releasing removes the file (only while it
is still the file locked) and drops the lock. A run killed outright leaves the file but
not the lock: the kernel drops a dead process's locks, so the next run takes it over.

What a failed ``flock`` means (:func:`lock_failure`): ``EWOULDBLOCK``/``EAGAIN``/``EACCES``
that another process holds it (:class:`LockHeld`); ``ENOLCK``, ``EOPNOTSUPP``, ``EINVAL``,
``ENOSYS`` that the file system has no file locks (:class:`LockUnsupported`; on Linux, NFS
supports ``flock`` through its lock service, NFSv4 or ``lockd``); anything else is an I/O
error of its own. Each is a :class:`StoreError` of one line.

A command that copies a store (``export``) holds a *shared* lock on the same file for as
long as it reads (:func:`share`): a run writing the store refuses it, and a run starting
meanwhile is refused (its exclusive lock cannot be taken). Several readers share it. A
reader records itself as the holder (``a reader, pid ...``), and removes the file when it
is done only if it can take the lock exclusively then (no one else holds it), as a run
does. Commands that only look (``info``, ``view``) ask :func:`store_is_busy` and take
no lock.

A store's lock file is named after its real path, links resolved (:func:`lock_path`), so a
store reached through a symbolic link has the one lock of the store it names.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import socket
import stat
import time
from datetime import UTC, datetime
from pathlib import Path

from reattn_batch.workers.errors import StoreError

log = logging.getLogger(__name__)

#: What a failed ``flock`` means, by errno.
HELD_ERRNOS = frozenset({errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES})
UNSUPPORTED_ERRNOS = frozenset(
    {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS}
)
#: Seconds a held lock is tried again before refusing: a reader's :func:`store_is_busy`
#: holds a shared lock for an instant, which must not refuse a run.
HELD_PATIENCE = 0.3
_RETRY = 0.05  # seconds between two tries
_REOPENS = 20  # times a lock file removed by its last holder meanwhile is opened again
_HOLDER_BYTES = 256  # at most this much of a lock file is read back (it is untrusted)
_FLAGS = os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
#: How a shared holder's line begins (a run's line is ``pid ... on HOST since ...``).
READER = "a reader, "


class LockHeld(StoreError):
    """Another process holds the lock."""


class LockUnsupported(StoreError):
    """The file system of the lock file has no file locks (``flock``)."""


def lock_failure(code: int | None) -> str | None:
    """What a failed ``flock`` with errno ``code`` means: ``"held"``, ``"unsupported"``
    (no file locks on that file system), or None (another I/O error)."""
    if code in HELD_ERRNOS:
        return "held"
    if code in UNSUPPORTED_ERRNOS:
        return "unsupported"
    return None


def refusal(
    exc: OSError, path: Path, what: str, fix: str, holder: str = "", shared: bool = False
) -> StoreError:
    """The one-line error for a ``flock`` of ``path`` that failed with ``exc``.
    what: what the lock guards (``the output store X``); fix: what to do when held;
    holder: the holder's line; shared: the lock asked for was a reader's (so the holder is
    a run writing)."""
    reason = exc.strerror or str(exc)
    kind = lock_failure(exc.errno)
    if kind == "held":
        by = f"held by {holder}" if holder else "its holder unknown"
        if shared:
            doing = "is being written by another run now"
        elif holder.startswith(READER):
            doing = "is being read by another command now"
        else:
            doing = "is in use by another run"
        return LockHeld(f"{what} {doing} ({by}; lock file {path}); {fix}")
    if kind == "unsupported":
        return LockUnsupported(
            f"the file system of {path} does not support file locks (flock: {reason}), so "
            f"{what} cannot be kept from a second run at once: write it on a file system "
            "with file locks (a local disk, or NFS with its lock service)"
        )
    return StoreError(f"cannot lock {path} for {what} ({reason}); check the folder")


class FileLock:
    """A held lock (see :func:`hold`, :func:`share`); :meth:`release` (or leaving
    ``with``) ends it."""

    def __init__(self, path: Path, fd: int, made: list[Path], shared: bool = False) -> None:
        self.path = path
        self.shared = shared
        self._fd: int | None = fd
        self._made = made  # folders created for the lock file, removed if left empty

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Remove the lock file (if it is still ours: a shared holder only when it can take
        it exclusively, so no other holder is left) and drop the lock; again: nothing."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if self.shared:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # OSError: others hold it
            if _still_named(fd, self.path):
                os.unlink(self.path)  # while locked exclusively: nobody can take this file now
        except OSError:
            pass
        finally:
            os.close(fd)
        for folder in reversed(self._made):
            try:
                os.rmdir(folder)  # only if nothing else was written there
            except OSError:
                break

    def __enter__(self) -> FileLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"FileLock({str(self.path)!r}, held={self.held})"


def hold(path: str | os.PathLike, *, what: str, fix: str, make_folder: bool = False) -> FileLock:
    """Take the exclusive lock of the file ``path`` now (waiting out a reader's instant,
    :data:`HELD_PATIENCE`), or raise a one-line StoreError.

    what: what the lock guards, for the error lines (``the output store X``).
    fix: what to do when another run holds it (``wait for it to end, ...``).
    make_folder: create the lock file's missing folders (removed again on release if
        they are still empty).
    """
    path = Path(path).absolute()
    made = _make_folders(path.parent, what) if make_folder else []
    try:
        return FileLock(path, _take(path, what, fix), made)
    except BaseException:
        for folder in reversed(made):
            with contextlib.suppress(OSError):
                os.rmdir(folder)
        raise


def share(path: str | os.PathLike, *, what: str, fix: str) -> FileLock | None:
    """Take a shared lock of the file ``path`` now (a reader's: other readers may hold it
    too, a writer's :func:`hold` is refused meanwhile), or raise a one-line StoreError when
    a writer holds it (:class:`LockHeld`). None where the lock file neither exists nor can
    be created (a folder this user may not write: no run of this user writes there, and
    no other user's run is writing now, for it would have made the file), and, with a
    warning, on a file system without file locks (no lock file is left there)."""
    path = Path(path).absolute()
    try:
        fd = _take(path, what, fix, shared=True)
    except _NoLockFile:
        return None
    except LockUnsupported:
        # no run can lock there either (it is refused at its start), so nothing to keep out
        log.warning(
            "the file system of %s has no file locks: %s is read without keeping a run "
            "from starting meanwhile",
            path.parent,
            what,
        )
        return None
    return FileLock(path, fd, [], shared=True)


class _NoLockFile(Exception):
    """A reader cannot create the lock file, and there is none."""


def _take(path: Path, what: str, fix: str, shared: bool = False) -> int:
    """The fd of ``path`` with its exclusive (or ``shared``) ``flock`` held, its holder
    recorded. On a file system without file locks, a lock file this call created is
    removed again before :class:`LockUnsupported` is raised."""
    existed = os.path.lexists(path)
    patience = time.monotonic() + HELD_PATIENCE
    operation = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB
    for _ in range(_REOPENS):
        fd, writable = _open(path, what, reader=shared)
        try:
            try:
                fcntl.flock(fd, operation)
            except OSError as exc:
                kind = lock_failure(exc.errno)
                if kind == "held" and time.monotonic() < patience:
                    os.close(fd)
                    time.sleep(_RETRY)
                    continue
                if kind == "unsupported" and not existed:  # ours, and no one can lock it
                    with contextlib.suppress(OSError):
                        os.unlink(path)
                raise refusal(exc, path, what, fix, _holder(fd), shared) from None
            if not _still_named(fd, path):  # its last holder removed it meanwhile: again
                os.close(fd)
                continue
            if writable:
                _record_holder(fd, READER if shared else "")
            return fd
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise
    raise StoreError(f"cannot lock {path} for {what}: it keeps being replaced; check the folder")


def _open(path: Path, what: str, reader: bool = False) -> tuple[int, bool]:
    """Open (or create, mode 0600) the lock file without following a symbolic link; it
    must be a regular file with one link. Returns the fd and whether it is writable: a
    ``reader`` that may not create it opens an existing one read-only (flock needs no
    more), and raises :class:`_NoLockFile` where there is none."""
    try:
        fd, writable = os.open(path, _FLAGS, 0o600), True
    except OSError as exc:
        if not (reader and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS)):
            raise _open_error(exc, path, what) from None
        try:
            fd, writable = os.open(path, _READ_FLAGS), False
        except FileNotFoundError:
            raise _NoLockFile from None
        except OSError as again:
            raise _open_error(again, path, what) from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink > 1:  # 0: removed meanwhile
        os.close(fd)
        raise StoreError(
            f"the lock file {path} of {what} is not a regular file of its own (a special "
            "file or a hard link); remove it and run again"
        )
    return fd, writable


def _open_error(exc: OSError, path: Path, what: str) -> StoreError:
    """The one line of a lock file that cannot be opened (or created)."""
    if exc.errno == errno.ELOOP:
        return StoreError(
            f"the lock file {path} of {what} is a symbolic link; it is not followed: "
            "remove the link and run again"
        )
    if exc.errno in (errno.EACCES, errno.EPERM):
        return StoreError(
            f"cannot open the lock file {path} of {what} ({exc.strerror}): another user's "
            "run holds it or left it; ask them, or remove it if no run is writing"
        )
    return StoreError(
        f"cannot create the lock file {path} of {what} ({exc.strerror or exc}); "
        "pass an output path in a writable folder"
    )


def _still_named(fd: int, path: Path) -> bool:
    """True while ``path`` still names the file open as ``fd`` (not removed, not replaced)."""
    try:
        here = os.lstat(path)
    except OSError:
        return False
    mine = os.fstat(fd)
    return (here.st_dev, here.st_ino) == (mine.st_dev, mine.st_ino)


def _record_holder(fd: int, kind: str = "") -> None:
    """Write who holds the lock (one line, after ``kind``: :data:`READER` for a shared
    holder) and make the file 0600 (a leftover may not be)."""
    started = datetime.now(UTC).isoformat(timespec="seconds")
    line = f"{kind}pid {os.getpid()} on {socket.gethostname()} since {started}\n".encode()
    with contextlib.suppress(OSError):
        os.fchmod(fd, 0o600)
    os.ftruncate(fd, 0)
    os.pwrite(fd, line, 0)


def _holder(fd: int) -> str:
    """Who holds the lock, as its file says (one short printable line; '' if unknown)."""
    try:
        raw = os.pread(fd, _HOLDER_BYTES, 0)
    except OSError:
        return ""
    text = raw.decode("utf-8", "replace").splitlines()[0] if raw.strip() else ""
    return "".join(c for c in text if c.isprintable()).strip()[:120]


def _make_folders(folder: Path, what: str) -> list[Path]:
    """Create ``folder`` and its missing parents; the ones created, outermost first."""
    missing = []
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            break
        missing.append(candidate)
    made = []
    for candidate in reversed(missing):
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        except OSError as exc:
            for done in reversed(made):
                with contextlib.suppress(OSError):
                    os.rmdir(done)
            raise StoreError(
                f"cannot create the folder {candidate} for {what} ({exc.strerror or exc}); "
                "pass an output path in a writable folder"
            ) from None
        made.append(candidate)
    return made


# ----------------------------------------------------------------------------- stores


def lock_path(store: str | os.PathLike) -> Path:
    """The lock file of the store at ``store``: ``.<name>.lock`` beside the store it names,
    symbolic links resolved (a link to a store and the store have one lock)."""
    path = Path(store).expanduser().resolve()
    return path.parent / f".{path.name}.lock"


#: What a run refused by another holder of its store's lock may do.
RUN_FIX = "wait for it to end, or pass another out=path"


def lock_store(store: str | os.PathLike, fix: str = RUN_FIX) -> FileLock:
    """Take the lock of the store at ``store`` for a run (before it reads, creates or
    replaces the store), or raise :class:`LockHeld` naming the run (or reader) that holds
    it and ``fix``, what to do then. Hold it until the run ends; release it then (or use
    ``with``)."""
    return hold(lock_path(store), what=f"the output store {store}", fix=fix, make_folder=True)


def share_store(store: str | os.PathLike) -> FileLock | None:
    """Take a shared lock of the store at ``store`` for a command that copies it (an
    export), or raise :class:`LockHeld` where a run is writing it. While held, a run into
    the store is refused. None where there is no lock file and this user cannot make one
    (:func:`share`). Release it once the copy is made (or use ``with``)."""
    return share(
        lock_path(store),
        what=f"the label store {store}",
        fix="wait for that run to end, then export it",
    )


def store_is_busy(store: str | os.PathLike) -> bool:
    """True while a run holds the lock of the store at ``store`` (it is being written).
    Creates nothing and holds nothing (a shared lock for an instant, which a run starting
    then waits out: :data:`HELD_PATIENCE`). A store without a lock file, or on a file
    system without file locks, is not busy; a lock file of another user (mode 0600, not
    readable) is taken as busy."""
    try:
        fd = os.open(lock_path(store), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        # no lock file: no run since the last one released it; one we may not read (0600):
        # another user's run, taken as busy
        return exc.errno in (errno.EACCES, errno.EPERM)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        return lock_failure(exc.errno) == "held"
    finally:
        os.close(fd)  # drops the shared lock, if taken
    return False
