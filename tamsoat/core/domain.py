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
    REJECTED = "rejected"  # a radiologist rejected the whole study for AI review (reason on the study)


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
    REPORT_PRELIMINARY = "report_preliminary"  # optional UNVERIFIED SR right after analysis
    SHADOW_ANALYZE = "shadow_analyze"  # a candidate model version on a study already analysed (never shown)
    EXPORT_DATASET = "export_dataset"  # a de-identified research snapshot of signed studies


class AnalysisRole(StrEnum):
    CLINICAL = "clinical"  # the result radiologists review and reports carry
    SHADOW = "shadow"  # a candidate model's result, stored for comparison only: never current, never shown


class OutboxState(StrEnum):
    PENDING = "pending"
    SENT = "sent"
    DEAD = "dead"  # permanent failure (0xA9xx / 0xCxxx); reason kept
    COMMITTING = "committing"  # sent; waiting for the destination's storage commitment
    COMMITTED = "committed"  # the destination committed to keep it (storage commitment)


class NoduleType(StrEnum):
    """Nodule attenuation, as Lung-RADS distinguishes it."""

    SOLID = "solid"
    PART_SOLID = "part_solid"
    GROUND_GLASS = "ground_glass"


class Role(StrEnum):
    RADIOLOGIST = "radiologist"
    ADMIN = "admin"
    RESEARCHER = "researcher"
    INTEGRATION = "integration"  # a machine: STOW-RS sender (modality, PACS) or metrics scraper; no patient data


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
    volume_mm3: float | None  # None: not measured (e.g. a person gave only the diameter)
    confidence: float | None  # the AI's, 0..1; None for a finding a person measured
    decided_by: str = ""
    # Set when a person measured the finding (a radiologist edited an AI finding or added one): the
    # report names that person as the observer of the group and carries no AI confidence.
    measured_by: Observer | None = None
    nodule_type: str = ""  # a NoduleType value, or "" when not stated


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
