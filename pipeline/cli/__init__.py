"""The `reattn-batch` command line: the group, the entry point and the list of commands.

Each command lives in its own module here and uses only ``options.py`` (the shared
options); a ReattnError anywhere becomes one line on stderr (its Python parameter names
written as flags, cli/errors.py) and exit status 2
(``--debug`` shows the traceback); `run` and `job run` stopped by SIGTERM or SIGINT end
with one line and exit status 128 + the signal's number (pipeline/run/stop.py). Adding
a command is one line in :data:`COMMANDS`.
"""

from __future__ import annotations

import gc
import logging
import os
import sys

import click

from reattn_batch.cli.errors import as_flags
from reattn_batch.cli.eval import eval_command
from reattn_batch.cli.export import export_command
from reattn_batch.cli.info import info_command
from reattn_batch.cli.job import job_group
from reattn_batch.cli.options import OWNS
from reattn_batch.cli.run import run_command
from reattn_batch.cli.segment import segment_command
from reattn_batch.cli.view import view_command
from reattn_batch.run.stop import RunStopped, Stop, signals_ignored
from reattn_batch.workers.errors import ReattnError

#: Every command of `reattn-batch`, in --help order.
COMMANDS: tuple[click.Command, ...] = (
    segment_command,
    run_command,
    job_group,
    eval_command,
    export_command,
    info_command,
    view_command,
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.option("-v", "--verbose", is_flag=True, help="Log more.")
@click.version_option(package_name="reattn-batch")
@click.pass_context
def cli(ctx: click.Context, debug: bool, verbose: bool) -> None:
    """Training-free open-vocabulary mapping of remote-sensing imagery with ReAttnCLIP."""
    ctx.obj = {**(ctx.obj or {}), "debug": debug}
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    if not verbose:  # Dask's own chatter only with -v (read when distributed is imported)
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")


for _command in COMMANDS:
    cli.add_command(_command)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: a ReattnError -> one line on stderr, in the CLI's words (the
    Python parameters it names become flags), exit status 2; a run stopped by a signal
    (run/stop.py) -> one line, exit status 128 + the signal's number (143 for SIGTERM)."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    owns = argv is None  # the `reattn-batch` command itself, which owns its process
    try:
        cli.main(args=argv, prog_name="reattn-batch", standalone_mode=False, obj={OWNS: owns})
    except RunStopped as exc:
        _stopped(as_flags(str(exc), cli), exc.exit_status, owns)
    except Stop as stop:  # outside run_scene/run_job, which turn a Stop into RunStopped
        _stopped(
            f"stopped by {stop.name} before the work began or after it ended; nothing was "
            "left half done",
            128 + stop.signum,
            owns,
        )
    except ReattnError as exc:
        if debug:
            raise
        click.echo(f"reattn-batch: error: {as_flags(str(exc), cli)}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("reattn-batch: aborted", err=True)
        sys.exit(130)
    except click.UsageError as exc:  # unknown option, bad choice...: one line, not a usage dump
        hint = (
            f" (see `reattn-batch {exc.ctx.command_path.split(' ', 1)[-1]} --help`)"
            if exc.ctx
            else ""
        )
        click.echo(f"reattn-batch: error: {exc.format_message()}{hint}", err=True)
        sys.exit(2)
    except click.ClickException as exc:
        click.echo(f"reattn-batch: error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)


def _stopped(line: str, status: int, owns_process: bool) -> None:
    """Print a stopped command's one ``line`` and exit with ``status`` within a
    preemption's grace period: the interpreter's final garbage collection over torch's,
    GDAL's and Dask's objects takes seconds on a loaded machine, and everything of the run
    is closed and recorded by now. A repeated signal cannot cut the line short (the stop
    signals are ignored while it is printed, and until the process exits where the command
    owns it; a program that runs the command line in its own process gets its handlers
    back as this returns)."""
    with signals_ignored(restore=not owns_process):
        click.echo(f"reattn-batch: {line}", err=True)
        gc.freeze()
    sys.exit(status)


__all__ = ["COMMANDS", "cli", "main"]
