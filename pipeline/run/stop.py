"""Ending a run on a stop signal: a scheduler's preemption (SLURM, Kubernetes: SIGTERM, then
SIGKILL after a grace period, typically 30 s) or Ctrl-C (SIGINT).

The library installs no signal handler: :func:`stop_on_signals` is an explicit context
manager, which the command line (`run`, `job run`) enters around its work. Inside it, the
first SIGTERM or SIGINT raises :class:`Stop` in the main thread, as Ctrl-C raises
KeyboardInterrupt: submitting ends there, and the clean-up that any error gets runs (the
run's tasks still on the scheduler are cancelled, finished blocks' completion records are
flushed, the cluster it started is closed). A :class:`Stop` derives from BaseException,
like KeyboardInterrupt, so that no ``except Exception`` takes it for a failed block. The
run then raises :class:`RunStopped`, one line saying how far it got
(``pipeline/run/spine.py``, ``pipeline/regional/runner.py``).

Later signals are ignored while the ``with`` lasts, so a signal repeated during the
clean-up (SLURM signals every process of a job; a second Ctrl-C) cannot cut it short into
a traceback. When the ``with`` ends (the clean-up has run by then) the previous handlers
come back, stopped or not: a program or notebook that runs the command line in its own
process keeps its Ctrl-C. (The command line ignores the signals again, narrowly, while it
prints its last line: :func:`signals_ignored`.) A run killed outright (SIGKILL, no handler
runs) loses at most the last second's records, never more than that: records are never
ahead of the data (``pipeline/store/records.py``).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

from reattn_batch.workers.errors import ReattnError

#: The signals that stop a run: preemption (SIGTERM) and Ctrl-C (SIGINT).
STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)


class Stop(BaseException):  # noqa: N818 - like KeyboardInterrupt, not an error
    """A stop signal arrived (raised in the main thread by :func:`stop_on_signals`)."""

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        super().__init__(self.name)

    @property
    def name(self) -> str:
        """The signal's name, e.g. ``SIGTERM``."""
        return signal.Signals(self.signum).name


class RunStopped(ReattnError):
    """A run (or a job) ended by a stop signal; its message says what is recorded and how
    to finish (``resume=True``). ``signum``: the signal; ``exit_status``: 128 + signum, as
    a shell reports a process ended by that signal."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = int(signum)

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


@contextlib.contextmanager
def stop_on_signals(
    signals: tuple[signal.Signals, ...] = STOP_SIGNALS, *, restore_after_stop: bool = True
) -> Iterator[None]:
    """While active, the first of ``signals`` raises :class:`Stop` in the main thread and
    the later ones are ignored, so that the clean-up is not cut short; the previous
    handlers come back when the ``with`` ends, whether a signal came or not. Does nothing
    outside the main thread (Python runs signal handlers only there).

    restore_after_stop: False for a process that ends once it has said it was stopped
        (the `reattn-batch` command): after a stop the signals stay ignored, so that a
        repeated one cannot cut its last line or its exit short. True (the default) for a
        program that runs the work in its own process and goes on (a notebook, Airflow's
        PythonOperator, ``reattn_batch.cli.main`` called in-process): it gets its own
        handlers back."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stopped = False

    def ignore(signum, frame) -> None:
        return None

    def stop(signum, frame) -> None:
        nonlocal stopped
        if stopped:
            return
        stopped = True
        for each in signals:
            signal.signal(each, ignore)
        raise Stop(signum)

    previous = {each: signal.signal(each, stop) for each in signals}
    try:
        yield
    finally:
        if restore_after_stop or not stopped:
            for each, handler in previous.items():
                signal.signal(each, handler)


@contextlib.contextmanager
def signals_ignored(
    signals: tuple[signal.Signals, ...] = STOP_SIGNALS, *, restore: bool = True
) -> Iterator[None]:
    """Ignore ``signals`` while the ``with`` lasts (a stopped command's last line and exit
    preparation), then restore the previous handlers (``restore=False``: leave them ignored,
    for a process about to exit). Does nothing outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {each: signal.signal(each, signal.SIG_IGN) for each in signals}
    try:
        yield
    finally:
        if restore:
            for each, handler in previous.items():
                signal.signal(each, handler)
