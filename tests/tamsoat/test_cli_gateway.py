"""``tamsoat dicom echo`` and ``tamsoat outbox list|retry``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from tamsoat.cli import app
from tamsoat.core.db import Database, migrate
from tamsoat.core.domain import JobKind, JobState, OutboxState
from tamsoat.core.tables import Job, OutboxItem, Report, Study
from tests.dicom_gateway.gateway_helpers import RunningSCP, start_scp

runner = CliRunner()


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TAMSOAT_HOME", str(tmp_path / "home"))
    for var in ("TAMSOAT_DICOM__PORT", "TAMSOAT_WORKERS"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path / "home"


@pytest.fixture
def scp(tmp_path: Path) -> Iterator[RunningSCP]:
    server = start_scp(tmp_path)
    try:
        yield server
    finally:
        server.scp.stop(grace_s=1)


def test_echo_a_configured_destination_and_an_adhoc_peer(tmp_path: Path, scp: RunningSCP) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"destinations:\n  - {{name: pacs, ae_title: TAMSOAT, host: 127.0.0.1, port: {scp.port}}}\n")
    result = runner.invoke(app, ["dicom", "echo", "pacs", "--config", str(cfg)])
    assert result.exit_code == 0, result.output
    assert f"-> TAMSOAT@127.0.0.1:{scp.port}: success" in result.output
    result = runner.invoke(app, ["dicom", "echo", f"TAMSOAT@127.0.0.1:{scp.port}"])
    assert result.exit_code == 0, result.output


def test_echo_failures_exit_non_zero_with_a_sentence(scp: RunningSCP) -> None:
    scp.scp.stop(grace_s=0)
    result = runner.invoke(app, ["dicom", "echo", "PACS@127.0.0.1:1", "--timeout", "2"])
    assert result.exit_code == 1
    assert "C-ECHO to PACS@127.0.0.1:1 failed: could not associate" in result.output
    result = runner.invoke(app, ["dicom", "echo", "nowhere"])
    assert result.exit_code == 2 and "unknown destination 'nowhere'" in result.output


def _seed(home: Path) -> tuple[Database, int]:
    url = f"sqlite:///{home / 'tamsoat.db'}"
    migrate(url)
    db = Database(url)
    now = datetime.now(UTC)
    with db.session() as s:
        s.add(Study(study_instance_uid="1.2.3", state="signed", first_received_at=now, last_received_at=now))
        s.flush()
        report = Report(study_instance_uid="1.2.3", sop_instance_uid="1.2.3.4",
                        sop_class_uid="1.2.840.10008.5.1.4.1.1.88.34", kind="sr", path="/nowhere/sr.dcm",
                        created_at=now)
        s.add(report)
        s.flush()
        item = OutboxItem(destination="pacs", report_id=report.id, state=OutboxState.DEAD.value, attempts=1,
                          last_status=0xC000, error="0xC000 error: cannot understand", next_attempt_at=now,
                          created_at=now)
        s.add(item)
        s.flush()
        return db, item.id


def test_outbox_list_shows_dead_items_and_retry_requeues_them(home: Path) -> None:
    db, item_id = _seed(home)
    try:
        result = runner.invoke(app, ["outbox", "list"])
        assert result.exit_code == 0, result.output
        assert "dead" in result.output and "0xC000" in result.output and "cannot understand" in result.output
        result = runner.invoke(app, ["outbox", "list", "--state", "dead", "--json"])
        (line,) = result.output.strip().splitlines()
        row = json.loads(line)
        assert row["id"] == item_id and row["last_status"] == "0xC000" and row["sop_instance_uid"] == "1.2.3.4"
        assert runner.invoke(app, ["outbox", "list", "--state", "sent"]).output.strip() == "no sent items"
        assert runner.invoke(app, ["outbox", "list", "--state", "lost"]).exit_code == 2

        result = runner.invoke(app, ["outbox", "retry", str(item_id)])
        assert result.exit_code == 0, result.output
        with db.session() as s:
            item = s.get(OutboxItem, item_id)
            assert item is not None and item.state == OutboxState.PENDING and item.attempts == 0
            job = s.scalars(select(Job).where(Job.key == str(item_id))).one()
            assert job.kind == JobKind.SEND_OUTBOX and job.state == JobState.QUEUED

        again = runner.invoke(app, ["outbox", "retry", "9999"])
        assert again.exit_code == 1 and "no outbox item 9999" in again.output
    finally:
        db.dispose()
