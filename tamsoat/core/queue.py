"""The job queue as database rows: enqueue, claim, finish. Any runner (embedded threads now, Celery
workers later) moves jobs through the same states with these functions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from tamsoat.core.domain import JobState
from tamsoat.core.tables import Job


def enqueue(
    session: Session, kind: str, key: str, payload: dict[str, Any] | None = None, *,
    delay_s: float = 0.0, dedupe: bool = True,
) -> Job:
    """Queue a job. With ``dedupe``, a job of the same kind and key that is still queued is reused."""
    now = datetime.now(UTC)
    if dedupe:
        existing = session.scalar(
            select(Job).where(Job.kind == kind, Job.key == key, Job.state == JobState.QUEUED.value)
        )
        if existing is not None:
            return existing
    job = Job(kind=kind, key=key, payload=payload or {}, state=JobState.QUEUED.value, attempts=0,
              not_before=now + timedelta(seconds=delay_s), created_at=now)
    session.add(job)
    session.flush()
    return job


def claim(session: Session, worker: str, kinds: tuple[str, ...] | None = None) -> Job | None:
    """Take the oldest due job, atomically: two workers never get the same one."""
    now = datetime.now(UTC)
    query = select(Job.id).where(Job.state == JobState.QUEUED.value, Job.not_before <= now)
    if kinds:
        query = query.where(Job.kind.in_(kinds))
    for job_id in session.scalars(query.order_by(Job.not_before, Job.id).limit(5)).all():
        taken = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.state == JobState.QUEUED.value)
            .values(state=JobState.RUNNING.value, worker=worker, started_at=now, attempts=Job.attempts + 1)
        )
        if taken.rowcount == 1:  # type: ignore[attr-defined]
            return session.get(Job, job_id)
    return None


def finish(session: Session, job_id: int) -> None:
    session.execute(
        update(Job).where(Job.id == job_id)
        .values(state=JobState.DONE.value, finished_at=datetime.now(UTC), error="")
    )


def fail(session: Session, job_id: int, error: str) -> None:
    session.execute(
        update(Job).where(Job.id == job_id)
        .values(state=JobState.FAILED.value, finished_at=datetime.now(UTC), error=error[:4000])
    )


def retry_later(session: Session, job_id: int, delay_s: float, error: str) -> None:
    session.execute(
        update(Job).where(Job.id == job_id).values(
            state=JobState.QUEUED.value, error=error[:4000],
            not_before=datetime.now(UTC) + timedelta(seconds=delay_s),
        )
    )


def requeue_interrupted(session: Session) -> int:
    """Jobs left running by a process that died go back to the queue. Returns how many."""
    result = session.execute(
        update(Job).where(Job.state == JobState.RUNNING.value).values(state=JobState.QUEUED.value)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


class JobNotRetriable(ValueError):
    """Only a failed job can be queued again; the message says why this one cannot."""


def retry_failed(session: Session, job_id: int) -> Job:
    """Queue a failed job again, due now, with its attempt count kept."""
    job = session.get(Job, job_id)
    if job is None:
        raise JobNotRetriable(f"no job {job_id}")
    if job.state != JobState.FAILED.value:
        raise JobNotRetriable(f"job {job_id} is {job.state}; only a failed job can be retried")
    job.state = JobState.QUEUED.value
    job.not_before = datetime.now(UTC)
    job.finished_at = None
    return job
