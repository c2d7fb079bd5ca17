"""The outbox task with the outbound-sender seam replaced by a scripted fake."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest

from dicom_gateway.scu import SendResult
from tamsoat.core import queue
from tamsoat.core.db import Database
from tamsoat.core.domain import JobKind, JobState, OutboxState
from tamsoat.core.settings import Destination, load_settings
from tamsoat.core.tables import Job, OutboxItem, Report, Study
from tamsoat.jobs import run_job
from tamsoat.tasks import TaskContext


class ScriptedSender:
    def __init__(self, outcomes: list[tuple[int | None, str]]) -> None:
        self.outcomes = outcomes
        self.calls = 0

    def __call__(self, dest: Destination, paths: Sequence[Path], calling_ae: str) -> list[SendResult]:
        status, outcome = self.outcomes[min(self.calls, len(self.outcomes) - 1)]
        self.calls += 1
        return [SendResult(path=paths[0], status=status, outcome=outcome, message=f"status {status}")]  # type: ignore[arg-type]


def setup(db: Database, tmp_path: Path, sender: ScriptedSender, max_attempts: int = 3) -> tuple[TaskContext, int]:
    settings = load_settings(home=tmp_path, send_retry_max_attempts=max_attempts, send_retry_base_s=2,
                             destinations=[{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 1}])
    now = datetime.now(UTC)
    with db.session() as s:
        s.add(Study(study_instance_uid="1.2", state="signed", first_received_at=now, last_received_at=now))
        s.flush()
        r = Report(study_instance_uid="1.2", sop_instance_uid="1.2.9", sop_class_uid="1.2.840.10008.5.1.4.1.1.88.34",
                   kind="sr", path=str(tmp_path / "sr.dcm"), created_at=now)
        s.add(r)
        s.flush()
        item = OutboxItem(destination="pacs", report_id=r.id, state="pending", next_attempt_at=now, created_at=now)
        s.add(item)
        s.flush()
        job_id = queue.enqueue(s, JobKind.SEND_OUTBOX.value, str(item.id)).id
    return TaskContext(settings=settings, db=db, sender=sender), job_id


def run_once(ctx: TaskContext, job_id: int) -> Job:
    with ctx.db.session() as s:
        job = s.get(Job, job_id)
        assert job is not None
        key, payload = job.key, dict(job.payload)
    run_job(ctx, job_id, JobKind.SEND_OUTBOX.value, key, payload)
    with ctx.db.session() as s:
        job = s.get(Job, job_id)
        assert job is not None
        return job


def item_state(db: Database) -> OutboxItem:
    with db.session() as s:
        item = s.query(OutboxItem).one()
        s.expunge(item)
        return item


@pytest.mark.parametrize("status", [0x0000, 0xB000, 0xB007])
def test_success_and_warnings_are_sent(db: Database, tmp_path: Path, status: int) -> None:
    ctx, job_id = setup(db, tmp_path, ScriptedSender([(status, "success")]))
    assert run_once(ctx, job_id).state == JobState.DONE
    item = item_state(db)
    assert item.state == OutboxState.SENT and item.last_status == status and item.sent_at is not None


def test_transient_failures_back_off_then_succeed(db: Database, tmp_path: Path) -> None:
    sender = ScriptedSender([(0xA700, "retry"), (None, "retry"), (0, "success")])
    ctx, job_id = setup(db, tmp_path, sender, max_attempts=5)
    job = run_once(ctx, job_id)
    assert job.state == JobState.QUEUED
    first_delay = (job.not_before - datetime.now(UTC)).total_seconds()
    assert 1.0 < first_delay <= 2.0
    assert item_state(db).state == OutboxState.PENDING and item_state(db).last_status == 0xA700
    job = run_once(ctx, job_id)
    assert 3.0 < (job.not_before - datetime.now(UTC)).total_seconds() <= 4.0  # exponential: 2 s, then 4 s
    assert run_once(ctx, job_id).state == JobState.DONE
    assert item_state(db).state == OutboxState.SENT and sender.calls == 3


def test_permanent_failure_and_exhausted_retries_are_dead_lettered(db: Database, tmp_path: Path) -> None:
    ctx, job_id = setup(db, tmp_path, ScriptedSender([(0xA900, "dead")]))
    assert run_once(ctx, job_id).state == JobState.DONE
    item = item_state(db)
    assert item.state == OutboxState.DEAD and item.last_status == 0xA900
    assert item.error == "status 43264"


def test_retries_stop_after_max_attempts(db: Database, tmp_path: Path) -> None:
    ctx, job_id = setup(db, tmp_path, ScriptedSender([(0xA702, "retry")]), max_attempts=2)
    assert run_once(ctx, job_id).state == JobState.QUEUED
    assert run_once(ctx, job_id).state == JobState.DONE
    item = item_state(db)
    assert item.state == OutboxState.DEAD and item.attempts == 2
