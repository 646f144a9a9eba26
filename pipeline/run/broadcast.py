"""Asking the workers something out of band (``client.run``) when any of them may leave
meanwhile (SPEC 3.5: a worker dying never fails a run another worker can finish).

``client.run`` fails as a whole when one target dies during the broadcast (the
``CommClosedError ... Scheduler Broadcast ... Stream is closed`` of a worker lost while the
run starts), and to a target that left after the caller listed it the scheduler keeps
trying to connect for its connect timeout (30 s by default). :func:`run_on_workers` asks
again, a bounded number of times, the targets that did not answer and are still there,
and gives up on a broadcast as soon as one of its targets has left; the callers decide
what a missing answer means (pipeline/run/cluster.py, pipeline/run/fingerprint.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Broadcasts at most per query: the first, and the retries for targets that did not answer.
ATTEMPTS = 3
#: Seconds one broadcast may take (a worker answers in milliseconds; its first CUDA call
#: may take seconds). A target that hangs without leaving costs at most ATTEMPTS times this.
TIMEOUT_S = 10.0
#: Seconds between two reads of the scheduler's worker list while a broadcast is out.
POLL_S = 0.25


class _Broadcast:
    """One ``client.run(fn, *args, workers=targets, on_error="return")`` in a daemon
    thread, so that the caller can stop waiting for it (the scheduler finishes it alone;
    its outcome is then dropped)."""

    def __init__(self, client, fn: Callable[..., Any], args: tuple, targets: list[str]) -> None:
        self.done = threading.Event()
        self.answers: dict[str, Any] = {}
        self.error: BaseException | None = None
        thread = threading.Thread(
            target=self._call, args=(client, fn, args, targets), daemon=True,
            name="reattn-broadcast",
        )  # fmt: skip
        thread.start()

    def _call(self, client, fn: Callable[..., Any], args: tuple, targets: list[str]) -> None:
        try:
            self.answers = client.run(fn, *args, workers=targets, on_error="return")
        except BaseException as exc:  # noqa: BLE001 (handed to the waiting caller)
            self.error = exc
        finally:
            self.done.set()


def present(client) -> set[str]:
    """The addresses of the workers the scheduler has now."""
    return set(client.scheduler_info(n_workers=-1).get("workers", {}))


def _wait(client, call: _Broadcast, targets: list[str], timeout: float) -> str | None:
    """Wait for ``call``: None once it answered, else why it was given up ("left": a
    target left the scheduler, so the broadcast would wait out a connect timeout)."""
    deadline = time.monotonic() + timeout
    while not call.done.wait(POLL_S):
        if not set(targets) <= present(client):
            return "left"
        if time.monotonic() >= deadline:
            return f"no answer within {timeout:g} s"
    return None


def run_on_workers(
    client,
    fn: Callable[..., T],
    *args: Any,
    workers: Collection[str],
    what: str,
    attempts: int = ATTEMPTS,
    timeout: float = TIMEOUT_S,
) -> dict[str, T]:
    """``fn(*args)`` on each of ``workers`` (addresses) that stays: ``{address: result}``
    of those that answered. Workers that leave, or die during the broadcast, are skipped;
    those that did not answer (a lost connection, an error of ``fn``, no answer within
    ``timeout`` seconds) are asked again while they are still there, in at most
    ``attempts`` broadcasts in all. ``what`` names the query in the log ("the precision
    query"). An error that is not one worker's (the scheduler is gone) is raised."""
    answers: dict[str, T] = {}
    failures: dict[str, str] = {}
    asked = pending = list(dict.fromkeys(workers))
    if not pending:
        return answers
    for attempt in range(attempts):
        if attempt:
            time.sleep(POLL_S)  # let the scheduler notice a worker that died answering
        still = present(client)
        pending = [w for w in pending if w in still]
        if not pending:
            break
        call = _Broadcast(client, fn, args, pending)
        given_up = _wait(client, call, pending, timeout)
        if given_up is not None:
            failures |= dict.fromkeys(pending, given_up)
            continue
        if call.error is not None:
            raise call.error
        for address, value in call.answers.items():
            if isinstance(value, BaseException):
                failures[address] = f"{type(value).__name__}: {value}"
            else:
                answers[address] = value
        pending = [w for w in pending if w not in answers]
    _report(what, asked, answers, failures, present(client) if pending else set())
    return answers


def _report(
    what: str, asked: list[str], answers: dict, failures: dict[str, str], still: set[str]
) -> None:
    """Log who left (INFO) and who stayed without an answer (WARNING)."""
    silent = [w for w in asked if w not in answers]
    left = [w for w in silent if w not in still]
    stayed = [w for w in silent if w in still]
    if left:
        log.info(
            "%s: %d worker(s) left meanwhile (%s); going on with the answers of %d",
            what, len(left), ", ".join(left), len(answers),
        )  # fmt: skip
    if stayed:
        log.warning(
            "%s: no answer from %d worker(s) (%s), going on without",
            what, len(stayed), "; ".join(f"{w}: {failures.get(w, '?')}" for w in stayed),
        )  # fmt: skip
