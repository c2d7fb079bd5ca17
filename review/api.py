"""The integration API of the review queue (``/api/v1``): studies, findings, decisions, sign-off."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from review import decisions
from review.auth import Principal, require_roles
from review.decisions import Actor
from review.errors import ApiError
from tamsoat.core import audit
from tamsoat.core.db import Database
from tamsoat.core.domain import Decision, Role, StudyState
from tamsoat.core.tables import Analysis, Finding, Report, Study

router = APIRouter(prefix="/api/v1", tags=["review"])

Reader = Annotated[Principal, Depends(require_roles(Role.RADIOLOGIST, Role.ADMIN))]
Radiologist = Annotated[Principal, Depends(require_roles(Role.RADIOLOGIST))]


class FindingOut(BaseModel):
    id: int
    tracking_uid: str
    label: str
    center_mm: tuple[float, float, float] = Field(description="patient coordinates (LPS), mm")
    diameter_mm: float
    volume_mm3: float
    confidence: float
    decision: Literal["accept", "reject"] | None
    decided_by: str | None
    decided_at: datetime | None
    source: Literal["ai", "radiologist"] = Field(description="who found it: the AI or a radiologist (added)")
    nodule_type: str = Field(description="solid, part_solid, ground_glass, or empty when not stated")
    reason: str = Field(description="why it was rejected")
    edited_by: str | None


class AnalysisOut(BaseModel):
    series_instance_uid: str
    model_id: str
    model_version: str
    weights_sha256: str
    routing_rule: str
    created_at: datetime
    timings_s: dict[str, float]


class StudySummary(BaseModel):
    study_instance_uid: str
    state: StudyState
    patient_name: str
    patient_id: str
    accession_number: str
    study_date: str
    study_description: str
    modalities: str
    last_received_at: datetime
    findings: int
    max_confidence: float | None
    error: str
    review_state: str = Field(description="new, in_review, signed, no_findings, rejected, or the pipeline state")
    claimed_by: str | None
    lung_rads: str = Field(description="the signed Lung-RADS category, or the suggested one before sign-off")


class StudyDetail(StudySummary):
    analysis: AnalysisOut | None
    findings_detail: list[FindingOut]
    signed_by: str | None
    signed_at: datetime | None
    reports: list[str] = Field(description="SOP Instance UIDs of the reports written for this study")


class DecisionIn(BaseModel):
    decision: Decision
    reason: str = Field(default="", max_length=500)


class SignOut(BaseModel):
    study_instance_uid: str
    state: StudyState
    accepted: int
    rejected: int


def _db(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


def _current_analysis(s: Session, study_uid: str) -> Analysis | None:
    return s.scalar(
        select(Analysis).options(selectinload(Analysis.findings))
        .where(Analysis.study_instance_uid == study_uid, Analysis.current.is_(True))
    )


def _summary(study: Study, analysis: Analysis | None) -> dict[str, object]:
    findings = analysis.findings if analysis else []
    return {
        "study_instance_uid": study.study_instance_uid, "state": study.state,
        "patient_name": study.patient_name, "patient_id": study.patient_id,
        "accession_number": study.accession_number, "study_date": study.study_date,
        "study_description": study.study_description, "modalities": study.modalities,
        "last_received_at": study.last_received_at, "findings": len(findings),
        "max_confidence": max((f.confidence for f in findings if f.source == "ai"), default=None),
        "error": study.error, "review_state": decisions.review_state(study, findings),
        "claimed_by": study.claimed_by or None,
        "lung_rads": study.lung_rads or (decisions.suggested_category(findings) if analysis else ""),
    }


def _finding_out(f: Finding) -> FindingOut:
    return FindingOut(
        id=f.id, tracking_uid=f.tracking_uid, label=f.label,
        center_mm=(f.center_x_mm, f.center_y_mm, f.center_z_mm), diameter_mm=f.diameter_mm,
        volume_mm3=f.volume_mm3, confidence=f.confidence, decision=f.decision or None,  # type: ignore[arg-type]
        decided_by=f.decided_by or None, decided_at=f.decided_at, source=f.source,  # type: ignore[arg-type]
        nodule_type=f.nodule_type, reason=f.reason, edited_by=f.edited_by or None,
    )


def _get_study(s: Session, study_uid: str) -> Study:
    study = s.get(Study, study_uid)
    if study is None:
        raise ApiError(404, "study_not_found", f"no study with Study Instance UID {study_uid}")
    return study


@router.get("/studies", response_model=list[StudySummary], summary="List studies, newest first")
def list_studies(request: Request, user: Reader, state: StudyState | None = None) -> list[dict[str, object]]:
    with _db(request).session() as s:
        query = select(Study).order_by(Study.last_received_at.desc())
        if state is not None:
            query = query.where(Study.state == state.value)
        studies = s.scalars(query.limit(500)).all()
        analyses = {
            a.study_instance_uid: a for a in s.scalars(
                select(Analysis).options(selectinload(Analysis.findings)).where(
                    Analysis.current.is_(True),
                    Analysis.study_instance_uid.in_([st.study_instance_uid for st in studies]))
            )
        }
        return [_summary(st, analyses.get(st.study_instance_uid)) for st in studies]


@router.get("/studies/{study_instance_uid}", response_model=StudyDetail, summary="One study with its findings")
def get_study(request: Request, study_instance_uid: str, user: Reader) -> dict[str, object]:
    with _db(request).session() as s:
        study = _get_study(s, study_instance_uid)
        analysis = _current_analysis(s, study_instance_uid)
        reports = s.scalars(select(Report.sop_instance_uid).where(
            Report.study_instance_uid == study_instance_uid).order_by(Report.id)).all()
        audit.record(s, user.name, "study.viewed", study_instance_uid, remote=user.remote)
        return {
            **_summary(study, analysis),
            "analysis": None if analysis is None else AnalysisOut(
                series_instance_uid=analysis.series_instance_uid, model_id=analysis.model_id,
                model_version=analysis.model_version, weights_sha256=analysis.weights_sha256,
                routing_rule=analysis.routing_rule, created_at=analysis.created_at,
                timings_s={k: float(v) for k, v in analysis.timings.items()},
            ),
            "findings_detail": [_finding_out(f) for f in (analysis.findings if analysis else [])],
            "signed_by": study.signed_by or None, "signed_at": study.signed_at, "reports": list(reports),
        }


@router.post("/studies/{study_instance_uid}/findings/{finding_id}/decision", response_model=FindingOut,
             summary="Accept or reject one AI finding")
def decide(request: Request, study_instance_uid: str, finding_id: int, body: DecisionIn,
           user: Radiologist) -> FindingOut:
    with _db(request).session() as s:
        study = _get_study(s, study_instance_uid)
        finding = decisions.decide(s, study, finding_id, body.decision, Actor(user.name, user.remote),
                                   reason=body.reason)
        return _finding_out(finding)


@router.post("/studies/{study_instance_uid}/sign", response_model=SignOut, status_code=202,
             summary="Sign the study: the report with the accepted findings is written and sent")
def sign(request: Request, study_instance_uid: str, user: Radiologist) -> SignOut:
    with _db(request).session() as s:
        study = _get_study(s, study_instance_uid)
        accepted, rejected = decisions.sign(s, study, Actor(user.name, user.remote))
    wake = getattr(request.app.state, "wake_workers", None)
    if wake is not None:
        wake()
    return SignOut(study_instance_uid=study_instance_uid, state=StudyState.SIGNED, accepted=accepted,
                   rejected=rejected)
