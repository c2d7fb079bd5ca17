from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from dicom_gateway.assembly import close_quiet_studies, record_instance
from dicom_gateway.scp import StoredInstance
from tamsoat.core.db import Database
from tamsoat.core.domain import StudyState
from tamsoat.core.tables import AuditEvent, Instance, Study

T0 = datetime(2026, 1, 1, 8, 0, tzinfo=UTC)
STUDY = "1.2.3"


def stored(sop: str, *, version: int = 1, duplicate: bool = False, modality: str = "CT") -> StoredInstance:
    return StoredInstance(
        sop_instance_uid=sop, sop_class_uid="1.2.840.10008.5.1.4.1.1.2", study_instance_uid=STUDY,
        series_instance_uid="1.2.3.4", transfer_syntax_uid="1.2.840.10008.1.2.1", path=f"x/{sop}.dcm",
        sha256="a" * 64, size=10, version=version, duplicate=duplicate, calling_ae_title="CT1",
        called_ae_title="TAMSOAT", peer_address="127.0.0.1", attributes={"Modality": modality, "PatientID": "P1"},
    )


def closed_log() -> tuple[list[str], object]:
    seen: list[str] = []

    def on_closed(_s: Session, uid: str) -> None:
        seen.append(uid)

    return seen, on_closed


def test_study_closes_after_the_quiet_period_only(db: Database) -> None:
    with db.session() as s:
        record_instance(s.connection(), stored("1.1"), now=T0)
        record_instance(s.connection(), stored("1.2", modality="PT"), now=T0 + timedelta(seconds=5))
    seen, on_closed = closed_log()
    with db.session() as s:
        assert close_quiet_studies(s, 10, on_closed, now=T0 + timedelta(seconds=14)) == []  # type: ignore[arg-type]
        assert close_quiet_studies(s, 10, on_closed, now=T0 + timedelta(seconds=15)) == [STUDY]  # type: ignore[arg-type]
        study = s.get(Study, STUDY)
        assert study is not None and study.state == StudyState.QUEUED and study.modalities == "CT\\PT"
        assert study.patient_id == "P1"
    assert seen == [STUDY]


def test_duplicates_change_nothing_and_late_instances_reopen(db: Database) -> None:
    with db.session() as s:
        record_instance(s.connection(), stored("1.1"), now=T0)
        close_quiet_studies(s, 1, lambda *_: None, now=T0 + timedelta(seconds=2))
        s.flush()  # record_instance works on the connection: it sees what the session has flushed
        record_instance(s.connection(), stored("1.1", duplicate=True), now=T0 + timedelta(seconds=3))
        study = s.get(Study, STUDY)
        assert study is not None and study.state == StudyState.QUEUED
        record_instance(s.connection(), stored("1.2"), now=T0 + timedelta(seconds=4))
        s.refresh(study)
        assert study.state == StudyState.RECEIVING and study.closed_at is None
        assert "study.reopened" in s.scalars(select(AuditEvent.action)).all()


def test_unrecorded_duplicate_is_recorded_and_new_version_supersedes(db: Database) -> None:
    with db.session() as s:
        # The first store's row was lost (the sink failed): the peer's retry arrives as a duplicate.
        record_instance(s.connection(), stored("1.1", duplicate=True), now=T0)
        record_instance(s.connection(), replace(stored("1.1", version=2), sha256="b" * 64), now=T0)
        rows = s.scalars(select(Instance).order_by(Instance.version)).all()
        assert [(r.version, r.current) for r in rows] == [(1, False), (2, True)]
        assert "instance.new_version" in s.scalars(select(AuditEvent.action)).all()


def test_instances_of_a_receiving_study_are_recorded_in_one_batch(db: Database) -> None:
    """Several instances in one transaction (as the batching sink commits them), the common case
    included: each gets its row, the study its latest arrival time, modalities their union."""
    with db.session() as s:
        record_instance(s.connection(), stored("1.2.3.4.1"), now=T0)
        record_instance(s.connection(), stored("1.2.3.4.2"), now=T0 + timedelta(seconds=1))
        record_instance(s.connection(), stored("1.2.3.4.3", modality="PT"), now=T0 + timedelta(seconds=2))
        record_instance(s.connection(), stored("1.2.3.4.4"), now=T0 + timedelta(seconds=3))
    with db.session() as s:
        study = s.get(Study, STUDY)
        assert study is not None and study.state == StudyState.RECEIVING
        assert study.last_received_at == T0 + timedelta(seconds=3) and study.first_received_at == T0
        assert study.modalities == "CT\\PT" and study.patient_id == "P1"
        rows = s.scalars(select(Instance).order_by(Instance.id)).all()
        assert [r.sop_instance_uid for r in rows] == [f"1.2.3.4.{i}" for i in range(1, 5)]
        assert all(r.current and r.version == 1 and r.calling_ae_title == "CT1" for r in rows)
        assert rows[1].received_at == T0 + timedelta(seconds=1)
