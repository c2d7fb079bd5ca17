"""Study assembly: record each stored instance against its study, and close a study once no
instance has arrived for a quiet period (DICOM has no end-of-study signal).

A late instance re-opens a closed study, so it is analysed again and the new result supersedes
the old one. An identical re-send changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from dicom_gateway.scp import StoredInstance
from tamsoat.core import audit
from tamsoat.core.domain import StudyState
from tamsoat.core.tables import Instance, Study

log = logging.getLogger(__name__)

OnStudyClosed = Callable[[Session, str], None]


def record_instance(conn: Connection, stored: StoredInstance, now: datetime | None = None) -> None:
    """Add a stored instance to its study (creating the study on its first instance), in the
    transaction open on ``conn``; the caller commits it (and flushes first what a session of its
    own on ``conn`` has pending: this reads the database, not that session).

    The instance after the first of a receiving study (every instance but a handful) takes two Core
    statements; the rest goes through the ORM, in a session that joins ``conn``'s transaction.
    """
    now = now or datetime.now(UTC)
    if stored.duplicate and _already_recorded(conn, stored):
        log.info("instance.duplicate sop=%s study=%s", stored.sop_instance_uid, stored.study_instance_uid)
        return
    if _record_common_case(conn, stored, now):
        return
    with Session(bind=conn, join_transaction_mode="rollback_only") as session:
        _record_with_orm(session, stored, now)
        session.commit()  # flushes into conn's transaction, which stays open for the caller


def _record_with_orm(session: Session, stored: StoredInstance, now: datetime) -> None:
    """A new study, a re-opened one, a new modality, a new version, or a duplicate that is not
    recorded yet (the first store was spooled but its row was not committed)."""
    study = session.get(Study, stored.study_instance_uid)
    attrs = stored.attributes
    if study is None:
        study = Study(
            study_instance_uid=stored.study_instance_uid, state=StudyState.RECEIVING.value,
            patient_name=attrs.get("PatientName", "")[:256], patient_id=attrs.get("PatientID", "")[:64],
            accession_number=attrs.get("AccessionNumber", "")[:64], study_date=attrs.get("StudyDate", "")[:8],
            study_description=attrs.get("StudyDescription", "")[:256], modalities="", error="",
            called_ae_title=stored.called_ae_title, first_received_at=now, last_received_at=now,
        )
        session.add(study)
        log.info("study.opened study=%s calling_ae=%s", stored.study_instance_uid, stored.calling_ae_title)
    else:
        if study.state != StudyState.RECEIVING.value:
            log.info("study.reopened study=%s previous_state=%s", study.study_instance_uid, study.state)
            audit.record(session, stored.calling_ae_title or "dicom", "study.reopened",
                         study.study_instance_uid, previous_state=study.state)
            study.state = StudyState.RECEIVING.value
            study.closed_at = None
        study.last_received_at = now
    modality = attrs.get("Modality", "")
    if modality and modality not in study.modalities.split("\\"):
        study.modalities = "\\".join(m for m in (*study.modalities.split("\\"), modality) if m)[:64]
    if stored.version > 1:
        session.execute(
            update(Instance).where(Instance.sop_instance_uid == stored.sop_instance_uid).values(current=False)
        )
        audit.record(session, stored.calling_ae_title or "dicom", "instance.new_version",
                     stored.sop_instance_uid, version=stored.version, study=stored.study_instance_uid)
    session.add(Instance(
        sop_instance_uid=stored.sop_instance_uid, version=stored.version,
        study_instance_uid=stored.study_instance_uid, series_instance_uid=stored.series_instance_uid,
        sop_class_uid=stored.sop_class_uid, transfer_syntax_uid=stored.transfer_syntax_uid,
        path=stored.path, sha256=stored.sha256, size=stored.size,
        calling_ae_title=stored.calling_ae_title, received_at=now, current=True,
    ))


def _instance_values(stored: StoredInstance, now: datetime) -> dict[str, object]:
    return {
        "sop_instance_uid": stored.sop_instance_uid, "version": stored.version,
        "study_instance_uid": stored.study_instance_uid, "series_instance_uid": stored.series_instance_uid,
        "sop_class_uid": stored.sop_class_uid, "transfer_syntax_uid": stored.transfer_syntax_uid,
        "path": stored.path, "sha256": stored.sha256, "size": stored.size,
        "calling_ae_title": stored.calling_ae_title, "received_at": now, "current": True,
    }


def _record_common_case(conn: Connection, stored: StoredInstance, now: datetime) -> bool:
    """The instance after the first of a study that is still receiving, first version, modality
    already listed. Returns False for every other case, having at most moved the study's
    ``last_received_at`` (which the ORM path sets too)."""
    if stored.version != 1:
        return False
    row = conn.execute(_TOUCH_RECEIVING_STUDY, {"uid": stored.study_instance_uid, "now": now}).first()
    if row is None:
        return False  # a new study, or one that closed: the ORM path opens or re-opens it
    modality = stored.attributes.get("Modality", "")
    if modality and modality not in row.modalities.split("\\"):
        return False
    conn.execute(_INSERT_INSTANCE, _instance_values(stored, now))
    return True


_TOUCH_RECEIVING_STUDY = (
    update(Study)
    .where(Study.study_instance_uid == bindparam("uid"), Study.state == StudyState.RECEIVING.value)
    .values(last_received_at=bindparam("now", type_=Study.__table__.c.last_received_at.type))
    .returning(Study.modalities)
)
_INSERT_INSTANCE = insert(Instance)


def _already_recorded(conn: Connection, stored: StoredInstance) -> bool:
    return conn.execute(
        select(Instance.id).where(Instance.sop_instance_uid == stored.sop_instance_uid,
                                  Instance.version == stored.version)
    ).first() is not None


def close_quiet_studies(
    session: Session, quiet_period_s: float, on_closed: OnStudyClosed, now: datetime | None = None
) -> list[str]:
    """Close every receiving study that has been quiet for ``quiet_period_s``; ``on_closed`` runs in
    the same transaction (it queues the analysis), so a closed study always has its job."""
    now = now or datetime.now(UTC)
    cutoff = now - timedelta(seconds=quiet_period_s)
    studies = session.scalars(
        select(Study).where(Study.state == StudyState.RECEIVING.value, Study.last_received_at <= cutoff)
    ).all()
    for study in studies:
        study.state = StudyState.QUEUED.value
        study.closed_at = now
        study.error = ""
        on_closed(session, study.study_instance_uid)
        log.info("study.closed study=%s", study.study_instance_uid)
    return [s.study_instance_uid for s in studies]
