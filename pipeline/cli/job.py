"""`reattn-batch job ...`: regional jobs from a spec file (pipeline/regional/).

Exit status of `job run`: 0 when every scene is done, resumed or skipped; 1 when any scene
failed (see summary.json); 2 when the spec itself is wrong (one line naming the key); 143
or 130 when SIGTERM or SIGINT stopped it (one line; run it again to finish).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from reattn_batch.cli.options import owns_process

log = logging.getLogger("reattn_batch")


@click.group("job")
def job_group() -> None:
    """Map many scenes from one job spec (YAML): idempotent, for cron or Airflow."""


@job_group.command("run")
@click.argument("spec_file", metavar="SPEC.yaml", type=click.Path(path_type=Path))
@click.option(
    "--summary",
    type=click.Path(path_type=Path),
    help="Write the JSON summary here (default: <output_root>/summary.json).",
)
def run_job_command(spec_file: Path, summary: Path | None) -> None:
    """Map every scene of SPEC.yaml: finished scenes are skipped, partial ones resumed.

    Exits 1 if any scene failed (the others are still mapped), 2 if the spec is wrong.
    """
    from reattn_batch.regional.runner import run_job
    from reattn_batch.regional.spec import RegionalJob
    from reattn_batch.run.stop import stop_on_signals

    job = RegionalJob.load(spec_file)
    # SIGTERM, SIGINT: tasks cancelled, records flushed, one line
    with stop_on_signals(restore_after_stop=not owns_process()):
        report = run_job(job, summary)
    counts = ", ".join(f"{n} {status}" for status, n in report.counts.items() if n)
    log.info(
        "job %s: %d scenes (%s) in %.1f s; summary %s",
        job.name, len(report.scenes), counts, report.seconds, report.summary,
    )  # fmt: skip
    for entry in report.scenes:
        if entry.status == "failed":
            click.echo(f"reattn-batch: scene failed: {entry.uri}: {entry.message}", err=True)
    if report.failed:
        sys.exit(1)


@job_group.command("validate")
@click.argument("spec_file", metavar="SPEC.yaml", type=click.Path(path_type=Path))
def validate_command(spec_file: Path) -> None:
    """Check SPEC.yaml and list its scenes and the state of their stores; maps nothing."""
    from reattn_batch import store
    from reattn_batch.regional.spec import RegionalJob
    from reattn_batch.workers.errors import UserError
    from reattn_batch.workers.model_spec import describe_weights

    job = RegionalJob.load(spec_file)
    try:
        describe_weights(job.model)
    except UserError as exc:
        raise UserError(f"job spec {job.path}: 'model': {exc}") from None
    click.echo(f"job {job.name}: {len(job.scenes)} scenes -> {job.output_root}")
    click.echo(f"classes: {', '.join(job.classes.names)}; method: {job.model.cfg.method}")
    for uri in job.scenes:
        out = job.store_for(uri)
        state = "new"
        if (out / ".zgroup").exists():
            try:
                state = "complete" if store.read_attrs(out).get("complete") else "partial"
            except UserError:
                state = "unreadable store"
        elif out.exists():
            state = "path taken (not a store)"
        if uri in job.problems:
            state = f"will fail: {job.problems[uri]}"
        click.echo(f"  {uri} -> {out.name} [{state}]")
