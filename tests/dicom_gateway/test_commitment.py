"""Storage commitment after sending: results stay in the outbox until a (pynetdicom) PACS commits
them, whether it reports on the sending association or later on one of its own to our SCP."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage
from pynetdicom import AE, build_role, evt

from dicom_gateway.commitment import STORAGE_COMMITMENT_PUSH, STORAGE_COMMITMENT_PUSH_INSTANCE, CommitmentReport
from dicom_gateway.outbox import apply_commitment_report
from dicom_gateway.scp import ScpTimeouts, StorageSCP
from dicom_gateway.spool import Spool
from tamsoat.core import queue
from tamsoat.core.db import Database
from tamsoat.core.domain import JobKind, JobState, OutboxState
from tamsoat.core.settings import DicomSettings, load_settings
from tamsoat.core.tables import Job, OutboxItem, Report, Study
from tamsoat.jobs import run_job
from tamsoat.tasks import TaskContext
from tests.dicom_gateway.gateway_helpers import RecordingSink, make_ct_dataset


@dataclass
class FakePacs:
    """C-STORE SCP and Storage Commitment SCP. ``mode``: "same" reports on the requesting association,
    "later" keeps the request for :meth:`report_later`, "refuse" reports every instance as failed
    the first time, "silent" never reports."""

    mode: str
    stored: list[str] = field(default_factory=list)
    requests: list[tuple[str, list[tuple[str, str]]]] = field(default_factory=list)
    refused_once: bool = False
    port: int = 0
    server: Any = None

    def start(self, with_commitment: bool = True) -> None:
        ae = AE(ae_title="PACS")
        ae.add_supported_context(CTImageStorage)
        if with_commitment:
            ae.add_supported_context(STORAGE_COMMITMENT_PUSH)
        handlers = [(evt.EVT_C_STORE, self._store), (evt.EVT_N_ACTION, self._action)]
        self.server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
        self.port = self.server.server_address[1]

    def stop(self) -> None:
        self.server.shutdown()

    def _store(self, event: evt.Event) -> int:
        self.stored.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    def _action(self, event: evt.Event) -> tuple[int, Dataset | None]:
        info = event.action_information
        refs = [(str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID)) for i in info.ReferencedSOPSequence]
        self.requests.append((str(info.TransactionUID), refs))
        if self.mode in ("same", "refuse"):
            fail = self.mode == "refuse" and not self.refused_once
            self.refused_once = self.refused_once or fail
            assoc = event.assoc
            report = self.report(str(info.TransactionUID), refs, fail)
            # The report follows the N-ACTION response on the same association.
            threading.Timer(0.2, lambda: assoc.send_n_event_report(
                report, 2 if fail else 1, STORAGE_COMMITMENT_PUSH, STORAGE_COMMITMENT_PUSH_INSTANCE)).start()
        return 0x0000, None

    @staticmethod
    def report(transaction: str, refs: list[tuple[str, str]], fail: bool = False) -> Dataset:
        ds = Dataset()
        ds.TransactionUID = transaction
        items = []
        for sop_class, sop in refs:
            item = Dataset()
            item.ReferencedSOPClassUID = sop_class
            item.ReferencedSOPInstanceUID = sop
            if fail:
                item.FailureReason = 0x0110
            items.append(item)
        if fail:
            ds.FailedSOPSequence = items
        else:
            ds.ReferencedSOPSequence = items
        return ds

    def report_later(self, scp_port: int) -> int:
        """Open our own association to the service's SCP (as SCP of the SOP class) and report."""
        transaction, refs = self.requests[-1]
        ae = AE(ae_title="PACS")
        ae.add_requested_context(STORAGE_COMMITMENT_PUSH)
        assoc = ae.associate("127.0.0.1", scp_port, ae_title="TAMSOAT",
                             ext_neg=[build_role(STORAGE_COMMITMENT_PUSH, scp_role=True)])
        assert assoc.is_established
        try:
            status, _ = assoc.send_n_event_report(self.report(transaction, refs), 1, STORAGE_COMMITMENT_PUSH,
                                                  STORAGE_COMMITMENT_PUSH_INSTANCE)
        finally:
            assoc.release()
        return int(status.Status)


@pytest.fixture
def pacs() -> Iterator[FakePacs]:
    p = FakePacs("same")
    yield p
    if p.server is not None:
        p.stop()


def setup(db: Database, tmp_path: Path, port: int, wait_s: float = 3.0) -> tuple[TaskContext, int, int, str]:
    settings = load_settings(home=tmp_path / "home", send_retry_base_s=0.01, send_retry_max_attempts=4,
                             commitment_wait_s=wait_s,
                             destinations=[{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": port,
                                            "storage_commitment": True}])
    ds = make_ct_dataset(seed=1)
    path = tmp_path / "result.dcm"
    ds.save_as(path, enforce_file_format=True)
    now = datetime.now(UTC)
    with db.session() as s:
        s.add(Study(study_instance_uid=ds.StudyInstanceUID, state="signed", first_received_at=now,
                    last_received_at=now))
        s.flush()
        report = Report(study_instance_uid=ds.StudyInstanceUID, sop_instance_uid=ds.SOPInstanceUID,
                        sop_class_uid=ds.SOPClassUID, kind="sr", path=str(path), created_at=now)
        s.add(report)
        s.flush()
        item = OutboxItem(destination="pacs", report_id=report.id, state="pending", next_attempt_at=now,
                          created_at=now)
        s.add(item)
        s.flush()
        job = queue.enqueue(s, JobKind.SEND_OUTBOX.value, str(item.id))
        return TaskContext(settings=settings, db=db), item.id, job.id, str(ds.SOPInstanceUID)


def run(ctx: TaskContext, job_id: int, item_id: int) -> tuple[Job, OutboxItem]:
    run_job(ctx, job_id, JobKind.SEND_OUTBOX.value, str(item_id), {})
    with ctx.db.session() as s:
        job, item = s.get(Job, job_id), s.get(OutboxItem, item_id)
        assert job is not None and item is not None
        s.expunge_all()
        return job, item


def test_committed_on_the_sending_association(db: Database, tmp_path: Path, pacs: FakePacs) -> None:
    pacs.start()
    ctx, item_id, job_id, sop = setup(db, tmp_path, pacs.port)
    job, item = run(ctx, job_id, item_id)
    assert job.state == JobState.DONE
    assert item.state == OutboxState.COMMITTED and item.committed_at is not None and item.sent_at is not None
    assert item.last_status == 0 and item.error == ""
    assert pacs.stored == [sop]
    assert pacs.requests == [(item.commitment_uid, [(CTImageStorage, sop)])]


def test_refused_commitment_sends_again(db: Database, tmp_path: Path, pacs: FakePacs) -> None:
    pacs.mode = "refuse"
    pacs.start()
    ctx, item_id, job_id, sop = setup(db, tmp_path, pacs.port)
    job, item = run(ctx, job_id, item_id)
    assert job.state == JobState.QUEUED  # retried with backoff
    assert item.state == OutboxState.PENDING and "not committed" in item.error and "0x0110" in item.error
    time.sleep(0.05)
    job, item = run(ctx, job_id, item_id)
    assert item.state == OutboxState.COMMITTED
    assert pacs.stored == [sop, sop] and len(pacs.requests) == 2


def test_report_on_a_later_association_to_our_scp(db: Database, tmp_path: Path, pacs: FakePacs) -> None:
    pacs.mode = "later"
    pacs.start()
    ctx, item_id, job_id, _sop = setup(db, tmp_path, pacs.port, wait_s=0.2)
    job, item = run(ctx, job_id, item_id)
    assert job.state == JobState.QUEUED  # will ask again later unless the report comes first
    assert item.state == OutboxState.COMMITTING and "no report yet" in item.error

    def sink(report: CommitmentReport, calling_ae: str) -> None:
        with db.session() as s:
            apply_commitment_report(s, report, actor=calling_ae)

    settings = DicomSettings(ae_title="TAMSOAT", host="127.0.0.1").model_copy(update={"port": 0})
    scp = StorageSCP(settings, Spool(tmp_path / "spool", fsync=False), RecordingSink(), ScpTimeouts(5, 5, 5),
                     commitment_sink=sink)
    with scp:
        assert pacs.report_later(scp.port) == 0x0000
    with db.session() as s:
        committed = s.get(OutboxItem, item_id)
        assert committed is not None and committed.state == OutboxState.COMMITTED
        assert committed.committed_at is not None
    time.sleep(0.05)
    job, item = run(ctx, job_id, item_id)  # the queued re-ask finds it committed and does nothing
    assert job.state == JobState.DONE and item.state == OutboxState.COMMITTED and len(pacs.requests) == 1


def test_no_report_at_all_ends_dead_with_the_reason(db: Database, tmp_path: Path, pacs: FakePacs) -> None:
    pacs.mode = "silent"
    pacs.start()
    ctx, item_id, job_id, _sop = setup(db, tmp_path, pacs.port, wait_s=0.05)
    for _ in range(4):
        job, item = run(ctx, job_id, item_id)
        if job.state == JobState.DONE:
            break
        time.sleep(0.1)
    assert item.state == OutboxState.DEAD and "storage commitment" in item.error
    assert item.sent_at is not None and item.committed_at is None


def test_destination_without_commitment_support_is_dead_lettered(db: Database, tmp_path: Path,
                                                                 pacs: FakePacs) -> None:
    pacs.start(with_commitment=False)
    ctx, item_id, job_id, _sop = setup(db, tmp_path, pacs.port)
    job, item = run(ctx, job_id, item_id)
    assert job.state == JobState.DONE
    assert item.state == OutboxState.DEAD and "does not accept Storage Commitment" in item.error
