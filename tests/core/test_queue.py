from __future__ import annotations

from tamsoat.core import queue
from tamsoat.core.db import Database
from tamsoat.core.domain import JobState
from tamsoat.core.tables import Job


def test_claim_is_exclusive_and_in_order(db: Database) -> None:
    with db.session() as s:
        a = queue.enqueue(s, "k", "a").id
        b = queue.enqueue(s, "k", "b").id
    with db.session() as s:
        first = queue.claim(s, "w1")
        assert first is not None and first.id == a and first.attempts == 1
    with db.session() as s:
        second = queue.claim(s, "w2")
        assert second is not None and second.id == b
    with db.session() as s:
        assert queue.claim(s, "w3") is None


def test_dedupe_reuses_a_queued_job_only(db: Database) -> None:
    with db.session() as s:
        a = queue.enqueue(s, "k", "x").id
        assert queue.enqueue(s, "k", "x").id == a
        assert queue.enqueue(s, "k", "x", dedupe=False).id != a
        assert queue.enqueue(s, "other", "x").id != a


def test_delayed_retry_and_interrupted_jobs(db: Database) -> None:
    with db.session() as s:
        job_id = queue.enqueue(s, "k", "a").id
    with db.session() as s:
        assert queue.claim(s, "w") is not None
        queue.retry_later(s, job_id, 60, "peer busy")
    with db.session() as s:
        assert queue.claim(s, "w") is None  # not due yet
        job = s.get(Job, job_id)
        assert job is not None and job.state == JobState.QUEUED and job.error == "peer busy"
    with db.session() as s:
        other = queue.enqueue(s, "k", "b").id
        assert queue.claim(s, "w") is not None
    with db.session() as s:
        assert queue.requeue_interrupted(s) == 1
        job = s.get(Job, other)
        assert job is not None and job.state == JobState.QUEUED
