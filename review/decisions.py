"""The review queue's rules: claims, per-finding decisions and edits, sign-off, the review state.

Used by the web pages (``review.web``) and the integration API (``review.api``) alike. Every
change is audited in the same transaction. Errors are ``ApiError`` with a stable code.

Review states shown on the worklist (derived, not stored):

* ``new``: analysed, nobody has claimed or decided anything yet;
* ``in_review``: claimed, or at least one decision taken;
* ``signed``: signed with at least one finding in the report;
* ``no_findings``: signed with no finding in the report (the SR says "Nodule: Absent");
* ``rejected``: a radiologist rejected the whole study for AI review (reason kept);
* otherwise the pipeline state (receiving, queued, analyzing, failed, skipped).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from pydicom.uid import generate_uid
from sqlalchemy import select, update
from sqlalchemy.orm import Session, selectinload

from review import lungrads
from review.errors import ApiError
from tamsoat.core import audit, queue
from tamsoat.core.domain import Decision, JobKind, NoduleType, Observer, ReportFinding, StudyState
from tamsoat.core.tables import Analysis, Finding, Study, User

REVIEW_STATES = ("new", "in_review", "signed", "no_findings", "rejected")
REJECT_REASONS = ("vessel", "scar", "artefact", "duplicate", "outside_lung", "other")
SOURCE_AI = "ai"
SOURCE_RADIOLOGIST = "radiologist"
MIN_DIAMETER_MM, MAX_DIAMETER_MM = 1.0, 100.0


@dataclass(frozen=True)
class Actor:
    name: str
    remote: str


def current_analysis(s: Session, study_uid: str) -> Analysis | None:
    return s.scalar(
        select(Analysis).options(selectinload(Analysis.findings))
        .where(Analysis.study_instance_uid == study_uid, Analysis.current.is_(True))
    )


def get_study(s: Session, study_uid: str) -> Study:
    study = s.get(Study, study_uid)
    if study is None:
        raise ApiError(404, "study_not_found", f"no study with Study Instance UID {study_uid}")
    return study


def is_reported(f: Finding) -> bool:
    """Whether the finding goes into the signed report."""
    return f.decision == Decision.ACCEPT.value


def review_state(study: Study, findings: Sequence[Finding]) -> str:
    if study.state == StudyState.SIGNED.value:
        return "signed" if any(is_reported(f) for f in findings) else "no_findings"
    if study.state == StudyState.REJECTED.value:
        return "rejected"
    if study.state == StudyState.READY.value:
        return "in_review" if study.claimed_by or any(f.decision for f in findings) else "new"
    return study.state


def suggested_category(findings: Sequence[Finding]) -> str:
    """Lung-RADS from every finding not rejected (the AI's undecided ones count: they may be real)."""
    return lungrads.suggest((f.diameter_mm, f.nodule_type) for f in findings
                            if f.decision != Decision.REJECT.value)


# --- claims ------------------------------------------------------------------------------------

def claim(s: Session, study: Study, actor: Actor) -> bool:
    """Claim a study that is ready for review; True if ``actor`` holds it afterwards.

    An atomic conditional update, so two radiologists opening the same study at once cannot both win.
    """
    if study.state != StudyState.READY.value:
        return False
    if study.claimed_by == actor.name:
        return True
    now = datetime.now(UTC)
    taken = s.execute(
        update(Study).where(Study.study_instance_uid == study.study_instance_uid, Study.claimed_by == "",
                            Study.state == StudyState.READY.value)
        .values(claimed_by=actor.name, claimed_at=now)
        .execution_options(synchronize_session=False)
    )
    s.refresh(study)
    if taken.rowcount == 1:  # type: ignore[attr-defined]
        audit.record(s, actor.name, "study.claimed", study.study_instance_uid, remote=actor.remote)
        return True
    return study.claimed_by == actor.name


def release(s: Session, study: Study, actor: Actor, *, force: bool = False) -> None:
    if not study.claimed_by:
        return
    if study.claimed_by != actor.name and not force:
        raise ApiError(409, "claimed_by_other", f"the study is claimed by {study.claimed_by}")
    holder = study.claimed_by
    study.claimed_by = ""
    study.claimed_at = None
    audit.record(s, actor.name, "study.claim_broken" if force and holder != actor.name else "study.released",
                 study.study_instance_uid, remote=actor.remote, holder=holder)


def _reviewable(s: Session, study: Study, actor: Actor, *, auto_claim: bool) -> None:
    if study.state != StudyState.READY.value:
        raise ApiError(409, "study_not_reviewable",
                       f"study is {study.state}; decisions are taken only while it is ready for review")
    if study.claimed_by and study.claimed_by != actor.name:
        raise ApiError(409, "claimed_by_other", f"the study is being reviewed by {study.claimed_by}")
    if auto_claim and not claim(s, study, actor):
        raise ApiError(409, "claimed_by_other", f"the study is being reviewed by {study.claimed_by}")


def _finding(analysis: Analysis | None, finding_id: int) -> Finding:
    found = next((f for f in (analysis.findings if analysis else []) if f.id == finding_id), None)
    if found is None:
        raise ApiError(404, "finding_not_found", f"study has no current finding {finding_id}")
    return found


def _check_type(nodule_type: str | None) -> None:
    if nodule_type not in (None, "", *(t.value for t in NoduleType)):
        raise ApiError(422, "invalid_request", f"nodule type must be one of {[t.value for t in NoduleType]}")


def _check_diameter(diameter_mm: float | None) -> None:
    if diameter_mm is not None and not (MIN_DIAMETER_MM <= diameter_mm <= MAX_DIAMETER_MM):
        raise ApiError(422, "invalid_request",
                       f"diameter must be between {MIN_DIAMETER_MM:g} and {MAX_DIAMETER_MM:g} mm")


# --- decisions -----------------------------------------------------------------------------------

def decide(s: Session, study: Study, finding_id: int, decision: Decision, actor: Actor, *, reason: str = "",
           auto_claim: bool = False) -> Finding:
    _reviewable(s, study, actor, auto_claim=auto_claim)
    finding = _finding(current_analysis(s, study.study_instance_uid), finding_id)
    if decision == Decision.REJECT and finding.source == SOURCE_RADIOLOGIST:
        raise ApiError(409, "not_an_ai_finding", "a finding you added is removed, not rejected")
    finding.decision = decision.value
    finding.decided_by = actor.name
    finding.decided_at = datetime.now(UTC)
    finding.reason = reason.strip()[:500] if decision == Decision.REJECT else ""
    audit.record(s, actor.name, f"finding.{decision.value}", finding.tracking_uid, remote=actor.remote,
                 study=study.study_instance_uid, reason=finding.reason)
    return finding


def edit(s: Session, study: Study, finding_id: int, actor: Actor, *, center_mm: tuple[float, float, float] | None,
         diameter_mm: float | None, nodule_type: str | None, auto_claim: bool = False) -> Finding:
    """Change a finding's centre, diameter or type; an edited finding is accepted (it goes into the report)."""
    _reviewable(s, study, actor, auto_claim=auto_claim)
    _check_type(nodule_type)
    _check_diameter(diameter_mm)
    finding = _finding(current_analysis(s, study.study_instance_uid), finding_id)
    changes: dict[str, object] = {}
    if finding.source == SOURCE_AI and finding.ai_values is None:
        finding.ai_values = {"center_mm": [finding.center_x_mm, finding.center_y_mm, finding.center_z_mm],
                             "diameter_mm": finding.diameter_mm, "volume_mm3": finding.volume_mm3,
                             "nodule_type": finding.nodule_type}
    if center_mm is not None:
        finding.center_x_mm, finding.center_y_mm, finding.center_z_mm = (float(v) for v in center_mm)
        changes["center_mm"] = [round(float(v), 2) for v in center_mm]
    if diameter_mm is not None and diameter_mm != finding.diameter_mm:
        finding.diameter_mm = float(diameter_mm)
        finding.volume_mm3 = sphere_volume(diameter_mm)
        changes["diameter_mm"] = round(float(diameter_mm), 2)
    if nodule_type is not None and nodule_type != finding.nodule_type:
        finding.nodule_type = nodule_type
        changes["nodule_type"] = nodule_type
    now = datetime.now(UTC)
    if changes and finding.source == SOURCE_AI:
        finding.edited_by = actor.name
        finding.edited_at = now
    finding.decision = Decision.ACCEPT.value
    finding.decided_by = actor.name
    finding.decided_at = now
    finding.reason = ""
    audit.record(s, actor.name, "finding.edit", finding.tracking_uid, remote=actor.remote,
                 study=study.study_instance_uid, **changes)
    return finding


def add(s: Session, study: Study, actor: Actor, *, center_mm: tuple[float, float, float], diameter_mm: float,
        nodule_type: str, auto_claim: bool = False) -> Finding:
    """A nodule the AI missed, added by the radiologist (accepted, measured by them)."""
    _reviewable(s, study, actor, auto_claim=auto_claim)
    _check_type(nodule_type)
    _check_diameter(diameter_mm)
    analysis = current_analysis(s, study.study_instance_uid)
    if analysis is None:
        raise ApiError(409, "no_analysis", "the study has no analysis to add findings to")
    now = datetime.now(UTC)
    finding = Finding(
        tracking_uid=generate_uid(), label="nodule", center_x_mm=float(center_mm[0]),
        center_y_mm=float(center_mm[1]), center_z_mm=float(center_mm[2]), diameter_mm=float(diameter_mm),
        volume_mm3=sphere_volume(diameter_mm), confidence=0.0, source=SOURCE_RADIOLOGIST, nodule_type=nodule_type,
        decision=Decision.ACCEPT.value, decided_by=actor.name, decided_at=now,
    )
    analysis.findings.append(finding)
    s.flush()
    audit.record(s, actor.name, "finding.added", finding.tracking_uid, remote=actor.remote,
                 study=study.study_instance_uid, diameter_mm=round(float(diameter_mm), 2), nodule_type=nodule_type)
    return finding


def remove_added(s: Session, study: Study, finding_id: int, actor: Actor, *, auto_claim: bool = False) -> None:
    _reviewable(s, study, actor, auto_claim=auto_claim)
    analysis = current_analysis(s, study.study_instance_uid)
    finding = _finding(analysis, finding_id)
    if finding.source != SOURCE_RADIOLOGIST:
        raise ApiError(409, "not_added", "only a finding a radiologist added can be removed; reject AI findings")
    assert analysis is not None
    analysis.findings.remove(finding)
    s.delete(finding)
    audit.record(s, actor.name, "finding.removed", finding.tracking_uid, remote=actor.remote,
                 study=study.study_instance_uid)


def sign(s: Session, study: Study, actor: Actor, *, lung_rads: str | None = None) -> tuple[int, int]:
    """Sign: the study is closed, the claim released and the report job queued. Returns (reported, rejected)."""
    if study.state != StudyState.READY.value:
        raise ApiError(409, "study_not_signable", f"study is {study.state}; only a study ready for review "
                       "can be signed")
    if study.claimed_by and study.claimed_by != actor.name:
        raise ApiError(409, "claimed_by_other", f"the study is being reviewed by {study.claimed_by}")
    if lung_rads is not None and lung_rads not in lungrads.CATEGORIES:
        raise ApiError(422, "invalid_request", f"Lung-RADS category must be one of {list(lungrads.CATEGORIES)}")
    analysis = current_analysis(s, study.study_instance_uid)
    findings = analysis.findings if analysis else []
    undecided = [f.id for f in findings if not f.decision]
    if undecided:
        raise ApiError(409, "findings_undecided", f"decide every finding before signing; undecided: {undecided}")
    now = datetime.now(UTC)
    suggested = suggested_category(findings)
    study.state = StudyState.SIGNED.value
    study.signed_by = actor.name
    study.signed_at = now
    study.lung_rads = lung_rads or suggested
    study.claimed_by = ""
    study.claimed_at = None
    queue.enqueue(s, JobKind.REPORT_STUDY.value, study.study_instance_uid)
    reported = sum(is_reported(f) for f in findings)
    audit.record(s, actor.name, "study.signed", study.study_instance_uid, remote=actor.remote,
                 accepted=reported, rejected=len(findings) - reported, lung_rads=study.lung_rads,
                 suggested=suggested)
    return reported, len(findings) - reported


def reject_study(s: Session, study: Study, actor: Actor, *, reason: str) -> None:
    """Reject the whole study for AI review (wrong series, not diagnostic): nothing is reported, and a
    preliminary AI report already sent is withdrawn."""
    if study.state != StudyState.READY.value:
        raise ApiError(409, "study_not_reviewable", f"study is {study.state}; only a study ready for review "
                       "can be rejected")
    if study.claimed_by and study.claimed_by != actor.name:
        raise ApiError(409, "claimed_by_other", f"the study is being reviewed by {study.claimed_by}")
    if not reason.strip():
        raise ApiError(422, "invalid_request", "say why the study is rejected")
    study.state = StudyState.REJECTED.value
    study.review_note = reason.strip()[:1000]
    study.signed_by = actor.name
    study.signed_at = datetime.now(UTC)
    study.claimed_by = ""
    study.claimed_at = None
    queue.enqueue(s, JobKind.REPORT_STUDY.value, study.study_instance_uid)
    audit.record(s, actor.name, "study.rejected", study.study_instance_uid, remote=actor.remote,
                 reason=study.review_note)


def sphere_volume(diameter_mm: float) -> float:
    return math.pi / 6.0 * float(diameter_mm) ** 3


# --- report inputs -------------------------------------------------------------------------------

def report_findings(s: Session, analysis: Analysis, organization: str) -> list[ReportFinding]:
    """The findings that go into the signed report, in a stable order, with who measured what.

    An AI finding accepted unchanged keeps the AI's measurements and confidence. An edited AI finding
    keeps its Tracking UID (so it can be followed from a preliminary report) but is measured by the
    radiologist: no AI confidence, no volume. An added finding is measured by the radiologist.
    """
    names = {u.name: (u.display_name or u.name) for u in s.scalars(select(User))}
    out: list[ReportFinding] = []
    for f in sorted((f for f in analysis.findings if is_reported(f)), key=lambda f: f.id):
        n = len(out) + 1
        by_person = f.source == SOURCE_RADIOLOGIST or f.edited_at is not None
        who = f.edited_by or f.decided_by
        out.append(ReportFinding(
            tracking_id=f"Nodule {n}", tracking_uid=f.tracking_uid,
            center_mm=(f.center_x_mm, f.center_y_mm, f.center_z_mm), diameter_mm=f.diameter_mm,
            volume_mm3=None if by_person else f.volume_mm3,
            confidence=None if by_person else f.confidence,
            decided_by=f.decided_by,
            measured_by=Observer(name=names.get(who, who), organization=organization) if by_person else None,
            nodule_type=f.nodule_type,
        ))
    return out
