"""A Dask preload (``dask worker --preload THIS_FILE``, ``dask scheduler --preload
THIS_FILE``) that makes one real worker process die at a chosen moment of a run: the
worker-loss tests (tests/test_worker_loss.py) arm it, start a run, and check the store.

The moment is armed by writing a trigger into ``$REATTN_TEST_DIE_DIR/armed``; the first
process that meets it renames that file to ``fired`` (atomic: exactly one process fires
per arming, restarted workers included), writes its pid there and dies:

``client``
    the scheduler SIGKILLs a worker process as the next client connects (the run's
    client: before it asks the workers anything);
``run:NAME``
    a worker exits (``os._exit``) on receiving the out-of-band call (``client.run``) of
    the function named NAME, before it runs it: it dies during that broadcast;
``after:NAME``
    a worker runs that call, answers it, and exits right after;
``block``
    a worker exits while its first block task (key ``block-...``) executes.

Loaded by path in the dask processes, so it imports nothing from the tests. A worker
imports the block task's modules as it starts (before it joins the scheduler), so that
one restarted by its nanny is ready for the next case without a long first task.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import cloudpickle
from dask.utils import funcname
from distributed.diagnostics.plugin import SchedulerPlugin, WorkerPlugin

#: Seconds a worker lives on after the moment (``after:``, ``block``): long enough for
#: its answer to leave, short enough to die before the run's next step (or mid-block).
GRACE_S = 0.3


def _fire(trigger: str, pid: int | None = None) -> bool:
    """Whether this process takes the armed ``trigger`` (once per arming, over all
    processes); it then records the pid of the process to die (``pid``, by default its
    own) in the ``fired`` file."""
    folder = Path(os.environ["REATTN_TEST_DIE_DIR"])
    armed, fired = folder / "armed", folder / "fired"
    try:
        if armed.read_text().strip() != trigger:
            return False
        os.rename(armed, fired)  # exactly one process wins
    except OSError:
        return False
    fired.write_text(str(pid or os.getpid()))
    return True


def _exit_soon() -> None:
    asyncio.get_running_loop().call_later(GRACE_S, os._exit, 1)


class _DieInBlock(WorkerPlugin):
    name = "reattn-test-die-in-block"

    def transition(self, key, start, finish, **kwargs) -> None:
        if finish == "executing" and str(key).startswith("block-") and _fire("block"):
            _exit_soon()


class _KillAtClient(SchedulerPlugin):
    name = "reattn-test-kill-at-client"

    def add_client(self, scheduler, client: str) -> None:
        workers = [ws for ws in scheduler.workers.values() if ws.pid]
        if workers and _fire("client", workers[0].pid):
            os.kill(workers[0].pid, signal.SIGKILL)


def _wrap_run(worker) -> None:
    """Wrap the worker's ``run`` handler (what ``client.run`` calls)."""
    original = worker.handlers["run"]

    async def run(comm, function, args=(), wait=True, kwargs=None):
        name = funcname(cloudpickle.loads(function))
        if _fire(f"run:{name}"):
            os._exit(1)
        response = original(comm, function=function, args=args, wait=wait, kwargs=kwargs)
        if asyncio.iscoroutine(response):
            response = await response
        if _fire(f"after:{name}"):
            _exit_soon()
        return response

    worker.handlers["run"] = run


async def dask_setup(server) -> None:
    """The preload's hook: a worker gets the wrapped ``run`` and the block plugin, the
    scheduler the client plugin."""
    from distributed import Scheduler, Worker

    if isinstance(server, Worker):
        import reattn_batch.blocks.task  # noqa: F401 (warm: see the module docstring)

        _wrap_run(server)
        await server.plugin_add(_DieInBlock(), name=_DieInBlock.name)
    elif isinstance(server, Scheduler):
        server.add_plugin(_KillAtClient())
