from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from tamsoat.cli import app
from tamsoat.core import queue
from tamsoat.core.db import Database, migrate
from tamsoat.core.domain import JobState
from tamsoat.core.tables import AuditEvent, Job

runner = CliRunner()


@pytest.fixture
def home_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Database:
    monkeypatch.setenv("TAMSOAT_HOME", str(tmp_path))
    url = f"sqlite:///{tmp_path / 'tamsoat.db'}"
    migrate(url)
    return Database(url)


def test_a_failed_job_is_listed_with_its_reason_and_can_be_retried(home_db: Database) -> None:
    with home_db.session() as s:
        failed = queue.enqueue(s, "report_study", "1.2.3").id
        done = queue.enqueue(s, "send_outbox", "7").id
    with home_db.session() as s:
        queue.claim(s, "w")
        queue.fail(s, failed, "ValueError: no evidence")
        queue.claim(s, "w")
        queue.finish(s, done)

    listed = runner.invoke(app, ["jobs", "list", "--state", "failed"])
    assert listed.exit_code == 0 and "report_study" in listed.output and "no evidence" in listed.output
    assert "send_outbox" not in listed.output

    again = runner.invoke(app, ["jobs", "retry", str(failed)])
    assert again.exit_code == 0, again.output
    with home_db.session() as s:
        job = s.get(Job, failed)
        assert job is not None and job.state == JobState.QUEUED and job.attempts == 1
        assert s.scalar(select(AuditEvent.action).where(AuditEvent.target == str(failed))) == "job.retried"
        assert queue.claim(s, "w") is not None  # due now

    refused = runner.invoke(app, ["jobs", "retry", str(done)])
    assert refused.exit_code == 1 and "only a failed job" in refused.output
    missing = runner.invoke(app, ["jobs", "retry", "999"])
    assert missing.exit_code == 1 and "no job 999" in missing.output
    bad_state = runner.invoke(app, ["jobs", "list", "--state", "broken"])
    assert bad_state.exit_code == 2 and "unknown state" in bad_state.output
