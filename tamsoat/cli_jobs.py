"""``tamsoat jobs …``: the job queue for an administrator — what failed, and why, and run it again.

    tamsoat jobs list [--state failed] [--kind report_study]
    tamsoat jobs retry ID       queue a failed job again (audited)
"""

from __future__ import annotations

from typing import Annotated

import typer
from sqlalchemy import select

from tamsoat.cli_common import ConfigOpt, HomeOpt, fail, open_database, settings_from
from tamsoat.core import audit
from tamsoat.core.domain import JobState
from tamsoat.core.queue import JobNotRetriable, retry_failed
from tamsoat.core.tables import Job

jobs_app = typer.Typer(no_args_is_help=True, help="The job queue: analyses, reports, sends; failures and retries.")


def register(app: typer.Typer) -> None:
    app.add_typer(jobs_app, name="jobs")


@jobs_app.command("list")
def jobs_list(
    config: ConfigOpt = None, home: HomeOpt = None,
    state: Annotated[str | None, typer.Option(help="queued, running, done or failed.")] = None,
    kind: Annotated[str | None, typer.Option(help="e.g. analyze_study, report_study, send_outbox.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10000)] = 50,
) -> None:
    """List jobs, newest first, with the reason of any failure."""
    if state is not None and state not in {s.value for s in JobState}:
        raise fail(f"unknown state {state!r}: use {', '.join(s.value for s in JobState)}", 2)
    db = open_database(settings_from(config, home=home))
    with db.session() as s:
        query = select(Job).order_by(Job.id.desc()).limit(limit)
        if state is not None:
            query = query.where(Job.state == state)
        if kind is not None:
            query = query.where(Job.kind == kind)
        jobs = s.scalars(query).all()
    if not jobs:
        typer.echo("no jobs")
        return
    typer.echo(f"{'ID':>6}  {'KIND':<16} {'STATE':<8} {'TRIES':>5}  {'KEY':<40}  ERROR")
    for j in jobs:
        typer.echo(f"{j.id:>6}  {j.kind:<16} {j.state:<8} {j.attempts:>5}  {j.key[:40]:<40}  {j.error[:120]}")


@jobs_app.command("retry")
def jobs_retry(job_id: int, config: ConfigOpt = None, home: HomeOpt = None) -> None:
    """Queue a failed job again; a running service picks it up within a second."""
    db = open_database(settings_from(config, home=home))
    try:
        with db.session() as s:
            job = retry_failed(s, job_id)
            audit.record(s, "cli", "job.retried", str(job_id), kind=job.kind, key=job.key)
    except JobNotRetriable as exc:
        raise fail(str(exc)) from exc
    typer.echo(f"job {job_id} queued again")
