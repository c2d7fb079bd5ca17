"""Database tables (SQLAlchemy 2). The schema is created and changed only by Alembic migrations."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

UID = String(64)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite keeps no zone of its own)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime}


class Study(Base):
    __tablename__ = "studies"

    study_instance_uid: Mapped[str] = mapped_column(UID, primary_key=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    # Display attributes copied from the first instance; kept in the DB only, never logged.
    patient_name: Mapped[str] = mapped_column(String(256), default="")
    patient_id: Mapped[str] = mapped_column(String(64), default="")
    accession_number: Mapped[str] = mapped_column(String(64), default="")
    study_date: Mapped[str] = mapped_column(String(8), default="")
    study_description: Mapped[str] = mapped_column(String(256), default="")
    modalities: Mapped[str] = mapped_column(String(64), default="")
    called_ae_title: Mapped[str] = mapped_column(String(16), default="")
    first_received_at: Mapped[datetime] = mapped_column()
    last_received_at: Mapped[datetime] = mapped_column(index=True)
    closed_at: Mapped[datetime | None] = mapped_column()
    error: Mapped[str] = mapped_column(Text, default="")
    signed_by: Mapped[str] = mapped_column(String(64), default="")
    signed_at: Mapped[datetime | None] = mapped_column()
    # Review (issue 6): who holds the study for review, the study-level Lung-RADS category chosen at
    # sign-off, and why a radiologist rejected the whole study.
    claimed_by: Mapped[str] = mapped_column(String(64), default="", server_default="")
    claimed_at: Mapped[datetime | None] = mapped_column()
    lung_rads: Mapped[str] = mapped_column(String(4), default="", server_default="")
    review_note: Mapped[str] = mapped_column(Text, default="", server_default="")

    instances: Mapped[list[Instance]] = relationship(back_populates="study")


class Instance(Base):
    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, index=True)
    version: Mapped[int] = mapped_column(Integer, default=1)  # a re-send with other content: new version
    study_instance_uid: Mapped[str] = mapped_column(ForeignKey("studies.study_instance_uid"), index=True)
    series_instance_uid: Mapped[str] = mapped_column(UID, index=True)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    transfer_syntax_uid: Mapped[str] = mapped_column(UID)
    path: Mapped[str] = mapped_column(String(512))  # relative to the spool root
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(Integer)
    calling_ae_title: Mapped[str] = mapped_column(String(16), default="")
    received_at: Mapped[datetime] = mapped_column()
    current: Mapped[bool] = mapped_column(Boolean, default=True)

    study: Mapped[Study] = relationship(back_populates="instances")

    __table_args__ = (UniqueConstraint("sop_instance_uid", "version", name="uq_instance_version"),)


class Job(Base):
    """A unit of work for the embedded runner (or, later, a Celery worker)."""

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    key: Mapped[str] = mapped_column(String(128), index=True)  # e.g. the study UID
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    state: Mapped[str] = mapped_column(String(16), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    not_before: Mapped[datetime] = mapped_column(index=True)
    created_at: Mapped[datetime] = mapped_column()
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()
    worker: Mapped[str] = mapped_column(String(64), default="")
    error: Mapped[str] = mapped_column(Text, default="")


class Analysis(Base):
    """One run of one model on one series of a study."""

    __tablename__ = "analyses"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(ForeignKey("studies.study_instance_uid"), index=True)
    series_instance_uid: Mapped[str] = mapped_column(UID)
    model_id: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(32))
    weights_sha256: Mapped[str] = mapped_column(String(64))
    device_uid: Mapped[str] = mapped_column(UID)
    input_sha256: Mapped[str] = mapped_column(String(64))  # hash over the input instances' hashes
    routing_rule: Mapped[str] = mapped_column(String(64), default="")
    current: Mapped[bool] = mapped_column(Boolean, default=True)  # superseded by a re-run: False
    created_at: Mapped[datetime] = mapped_column()
    timings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # Research (issue 7). role: "clinical" (shown, reviewed, reported) or "shadow" (a candidate model run
    # beside the clinical one; never current, never shown or reported). shadow_of_id: the clinical analysis
    # of the same series that a shadow analysis is compared with.
    role: Mapped[str] = mapped_column(String(16), default="clinical", server_default="clinical", index=True)
    shadow_of_id: Mapped[int | None] = mapped_column(ForeignKey("analyses.id"), index=True)

    findings: Mapped[list[Finding]] = relationship(back_populates="analysis", order_by="Finding.id")


class Finding(Base):
    __tablename__ = "findings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    analysis_id: Mapped[int] = mapped_column(ForeignKey("analyses.id"), index=True)
    tracking_uid: Mapped[str] = mapped_column(UID, unique=True)
    label: Mapped[str] = mapped_column(String(32), default="nodule")
    center_x_mm: Mapped[float] = mapped_column(Float)
    center_y_mm: Mapped[float] = mapped_column(Float)
    center_z_mm: Mapped[float] = mapped_column(Float)
    diameter_mm: Mapped[float] = mapped_column(Float)
    volume_mm3: Mapped[float] = mapped_column(Float)
    confidence: Mapped[float] = mapped_column(Float)
    decision: Mapped[str] = mapped_column(String(16), default="")  # "" until decided
    decided_by: Mapped[str] = mapped_column(String(64), default="")
    decided_at: Mapped[datetime | None] = mapped_column()
    # Review (issue 6). source: "ai" (the model's) or "radiologist" (added by a reader, who is
    # decided_by). A radiologist's edit keeps the AI's values in ai_values and stamps edited_by/at.
    source: Mapped[str] = mapped_column(String(16), default="ai", server_default="ai")
    nodule_type: Mapped[str] = mapped_column(String(16), default="", server_default="")  # solid, part_solid, ...
    reason: Mapped[str] = mapped_column(Text, default="", server_default="")  # why it was rejected
    edited_by: Mapped[str] = mapped_column(String(64), default="", server_default="")
    edited_at: Mapped[datetime | None] = mapped_column()
    ai_values: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    analysis: Mapped[Analysis] = relationship(back_populates="findings")


class Report(Base):
    """A DICOM object we wrote (SR), kept until every destination has it."""

    __tablename__ = "reports"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(ForeignKey("studies.study_instance_uid"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    kind: Mapped[str] = mapped_column(String(16))  # "sr"
    path: Mapped[str] = mapped_column(String(512))
    created_at: Mapped[datetime] = mapped_column()


class OutboxItem(Base):
    """One object to send to one destination; retried until sent or dead-lettered."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    destination: Mapped[str] = mapped_column(String(64), index=True)
    report_id: Mapped[int] = mapped_column(ForeignKey("reports.id"), index=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column()
    last_status: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column()
    sent_at: Mapped[datetime | None] = mapped_column()
    # Storage commitment: the N-ACTION transaction UID while waiting, and when the peer committed.
    commitment_uid: Mapped[str] = mapped_column(UID, default="", server_default="")
    committed_at: Mapped[datetime | None] = mapped_column()

    __table_args__ = (UniqueConstraint("destination", "report_id", name="uq_outbox_dest_report"),)


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(128), default="")
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str] = mapped_column(String(256), default="")
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column()
    language: Mapped[str] = mapped_column(String(8), default="en", server_default="en")  # web UI: en, vi


class WebSession(Base):
    """A browser session: the cookie carries a signed random token whose sha256 is the id here."""

    __tablename__ = "web_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 of the token
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column()
    expires_at: Mapped[datetime] = mapped_column(index=True)
    last_seen_at: Mapped[datetime] = mapped_column()
    remote: Mapped[str] = mapped_column(String(64), default="")
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)

    user: Mapped[User] = relationship()


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column()
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)

    user: Mapped[User] = relationship()


class AuditEvent(Base):
    """Append-only: rows are inserted, never updated or deleted."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(index=True)
    actor: Mapped[str] = mapped_column(String(64))  # user name or "system" / AE title
    action: Mapped[str] = mapped_column(String(64), index=True)
    target: Mapped[str] = mapped_column(String(128), default="")  # a UID or id, never PHI
    remote: Mapped[str] = mapped_column(String(64), default="")
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class ModelDeployment(Base):
    """Which registered version of a model the routing uses, and which one runs in shadow beside it.

    No row: the routing rule's version, or the newest registered one. Promotion sets ``active_version`` and
    keeps the one it replaced in ``previous_version`` (rollback promotes that one again). Every change is
    audited.
    """

    __tablename__ = "model_deployments"

    model_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    active_version: Mapped[str] = mapped_column(String(32))
    previous_version: Mapped[str] = mapped_column(String(32), default="", server_default="")
    shadow_version: Mapped[str] = mapped_column(String(32), default="", server_default="")  # "": none
    updated_at: Mapped[datetime] = mapped_column()
    updated_by: Mapped[str] = mapped_column(String(64), default="")


class DatasetSnapshot(Base):
    """A de-identified research snapshot exported from reviewed studies (no PHI in this row)."""

    __tablename__ = "dataset_snapshots"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # the snapshot id (folder name)
    state: Mapped[str] = mapped_column(String(16), index=True)  # queued, running, done, failed
    requested_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()
    since: Mapped[str] = mapped_column(String(32), default="", server_default="")
    path: Mapped[str] = mapped_column(String(512), default="", server_default="")
    counts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    manifest_sha256: Mapped[str] = mapped_column(String(64), default="", server_default="")
    error: Mapped[str] = mapped_column(Text, default="", server_default="")
