"""Domain types shared by every stage of the flow.

Coordinates are DICOM patient coordinates (LPS, millimetres) unless a name says otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

Point3 = tuple[float, float, float]


class StudyState(StrEnum):
    RECEIVING = "receiving"  # instances are arriving; not closed yet
    QUEUED = "queued"  # closed after the quiet period; analysis job queued
    ANALYZING = "analyzing"
    READY = "ready"  # findings stored; waiting for a radiologist
    SIGNED = "signed"
    FAILED = "failed"  # analysis failed; the reason is on the study
    SKIPPED = "skipped"  # no routing rule matched; nothing to analyse


class Decision(StrEnum):
    ACCEPT = "accept"
    REJECT = "reject"


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class JobKind(StrEnum):
    ANALYZE_STUDY = "analyze_study"
    REPORT_STUDY = "report_study"
    SEND_OUTBOX = "send_outbox"


class OutboxState(StrEnum):
    PENDING = "pending"
    SENT = "sent"
    DEAD = "dead"  # permanent failure (0xA9xx / 0xCxxx); reason kept


class Role(StrEnum):
    RADIOLOGIST = "radiologist"
    ADMIN = "admin"
    RESEARCHER = "researcher"


@dataclass(frozen=True)
class Detection:
    """One finding as a detector reports it."""

    center_mm: Point3
    diameter_mm: float
    volume_mm3: float
    confidence: float
    label: str = "nodule"


@dataclass(frozen=True)
class ModelIdentity:
    """What identifies the algorithm that produced a finding (IHE AIR, TID 4019)."""

    model_id: str
    version: str
    name: str
    manufacturer: str
    device_uid: str  # changes with every trained version
    weights_sha256: str


@dataclass(frozen=True)
class ReportFinding:
    """A finding as it goes into a report, after the radiologist's decision."""

    tracking_id: str  # human-readable, unique within the report
    tracking_uid: str  # stable DICOM UID for this finding
    center_mm: Point3
    diameter_mm: float
    volume_mm3: float
    confidence: float
    decided_by: str = ""


@dataclass(frozen=True)
class Observer:
    """The person who verifies (signs) a report."""

    name: str  # DICOM PN form, e.g. "Nguyen^An"
    organization: str


@dataclass(frozen=True)
class StudyRef:
    """Enough of a study to route, analyse and report on it."""

    study_instance_uid: str
    series_instance_uids: tuple[str, ...] = field(default_factory=tuple)
