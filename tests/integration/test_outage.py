"""Outage test: the destination PACS (DCMTK storescp) is down while results are due. They queue in
the outbox and are retried with backoff by the real job runner and SCU; when the PACS comes back,
every result arrives exactly once."""

from __future__ import annotations

import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import select

from tamsoat.core import queue
from tamsoat.core.db import Database
from tamsoat.core.domain import JobKind, OutboxState
from tamsoat.core.settings import load_settings
from tamsoat.core.tables import OutboxItem, Report, Study
from tamsoat.jobs import EmbeddedRunner
from tamsoat.tasks import TaskContext
from tests.dicom_gateway.gateway_helpers import make_ct_dataset
from tests.integration.peers import free_port, need

pytestmark = [pytest.mark.slow, pytest.mark.dcmtk]

N_RESULTS = 6


def seed_results(db: Database, folder: Path, n: int) -> list[str]:
    """A signed study with ``n`` result objects, each queued for the destination ``pacs``."""
    folder.mkdir()
    now = datetime.now(UTC)
    study_uid = "1.2.826.0.1.3680043.10.511.1"
    sops = []
    with db.session() as s:
        s.add(Study(study_instance_uid=study_uid, state="signed", first_received_at=now, last_received_at=now))
        s.flush()
        for i in range(n):
            ds = make_ct_dataset(study_uid=study_uid, seed=i)
            path = folder / f"result{i}.dcm"
            ds.save_as(path, enforce_file_format=True)
            report = Report(study_instance_uid=study_uid, sop_instance_uid=ds.SOPInstanceUID,
                            sop_class_uid=ds.SOPClassUID, kind="sr", path=str(path), created_at=now)
            s.add(report)
            s.flush()
            item = OutboxItem(destination="pacs", report_id=report.id, state=OutboxState.PENDING.value,
                              next_attempt_at=now, created_at=now)
            s.add(item)
            s.flush()
            queue.enqueue(s, JobKind.SEND_OUTBOX.value, str(item.id), dedupe=False)
            sops.append(str(ds.SOPInstanceUID))
    return sops


def outbox(db: Database) -> list[OutboxItem]:
    with db.session() as s:
        items = list(s.scalars(select(OutboxItem).order_by(OutboxItem.id)).all())
        s.expunge_all()
    return items


def wait_for(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


def test_results_queue_during_an_outage_and_arrive_exactly_once(db: Database, tmp_path: Path) -> None:
    pacs_port = free_port()  # nothing listens here yet: the PACS is down
    settings = load_settings(
        home=tmp_path / "home", send_retry_base_s=0.2, send_retry_max_attempts=12,
        destinations=[{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": pacs_port}],
    )
    sops = seed_results(db, tmp_path / "results", N_RESULTS)
    runner = EmbeddedRunner(TaskContext(settings=settings, db=db), workers=1, poll_s=0.05)
    received = tmp_path / "pacs"
    received.mkdir()
    pacs: subprocess.Popen[bytes] | None = None
    runner.start()
    try:
        # Down: every result is tried, fails, and waits in the outbox for its next attempt.
        wait_for(lambda: all(i.attempts >= 2 for i in outbox(db)), 20, "two failed attempts per result")
        for item in outbox(db):
            assert item.state == OutboxState.PENDING and item.last_status is None
            assert "could not associate" in item.error and item.sent_at is None
        assert list(received.iterdir()) == []

        # Back up: -uf gives every received instance its own file, so a second copy would show.
        pacs = subprocess.Popen([need("storescp"), "--aetitle", "PACS", "-uf", "--output-directory", str(received),
                                 str(pacs_port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: all(i.state == OutboxState.SENT for i in outbox(db)), 30, "every result sent")
        time.sleep(1.0)  # anything sent twice would arrive now
    finally:
        runner.stop()
        if pacs is not None:
            pacs.terminate()
            pacs.wait(10)

    files = sorted(received.iterdir())
    arrived = [str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]
    assert sorted(arrived) == sorted(sops), "every result exactly once"
    items = outbox(db)
    assert all(i.last_status == 0 and i.error == "" and i.sent_at is not None for i in items)
    assert all(i.attempts >= 3 for i in items)  # at least two failures, then the success
