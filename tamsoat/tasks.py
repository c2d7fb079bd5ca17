"""Task functions: one per job kind. The embedded runner and (later) Celery workers call these same
functions; each takes a ``TaskContext``, the job's key and its payload."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pydicom
from pydicom.uid import generate_uid
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from dicom_gateway.scu import SendResult, send_files
from dicom_gateway.spool import write_durably
from tamsoat.core import audit, queue
from tamsoat.core.db import Database
from tamsoat.core.domain import JobKind, ModelIdentity, Observer, OutboxState, ReportFinding, StudyState
from tamsoat.core.settings import Destination, Settings
from tamsoat.core.tables import Analysis, Finding, Instance, OutboxItem, Report, Study, User
from tamsoat.deployments import queue_shadow, shadow_analyze
from tamsoat.research import export_dataset_task

log = logging.getLogger(__name__)

ANALYZE_STUDY = JobKind.ANALYZE_STUDY.value
REPORT_STUDY = JobKind.REPORT_STUDY.value
SEND_OUTBOX = JobKind.SEND_OUTBOX.value

Sender = Callable[[Destination, Sequence[Path], str], list[SendResult]]


class RetryLater(Exception):
    """Raised by a task to be run again after ``delay_s`` seconds."""

    def __init__(self, message: str, delay_s: float) -> None:
        super().__init__(message)
        self.delay_s = delay_s


@dataclass
class TaskContext:
    settings: Settings
    db: Database
    sender: Sender = send_files
    _analyzer: Any = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def spool_root(self) -> Path:
        return self.settings.spool_path

    @property
    def analyzer(self) -> Any:
        """The inference engine, built on first use (the web process never needs it)."""
        with self._lock:
            if self._analyzer is None:
                import torch

                from inference.pipeline import Engine
                from tamsoat.deployments import DeployedVersions

                torch.set_num_threads(self.settings.inference_threads)  # process-wide: resampling uses torch
                self._analyzer = Engine(self.settings.models_dir, self.settings.routing_file,
                                        threads=self.settings.inference_threads,
                                        resolve_version=DeployedVersions(self.db))  # promotions (issue 7)
            return self._analyzer


def on_study_closed(session: Session, study_uid: str) -> None:
    queue.enqueue(session, ANALYZE_STUDY, study_uid)


# --- analyze_study -------------------------------------------------------------------------------

def analyze_study(ctx: TaskContext, study_uid: str, payload: dict[str, Any]) -> None:
    with ctx.db.session() as s:
        study = s.get(Study, study_uid)
        if study is None:
            raise ValueError(f"study {study_uid} is not known")
        if study.state != StudyState.QUEUED.value:
            log.info("analysis.skipped_state study=%s state=%s", study_uid, study.state)
            return
        study.state = StudyState.ANALYZING.value
        called_ae_title = study.called_ae_title or None  # routing rules may select on it; "" is unknown
        rows = s.execute(
            select(Instance.series_instance_uid, Instance.path, Instance.sha256)
            .where(Instance.study_instance_uid == study_uid, Instance.current.is_(True))
        ).all()
    series: dict[str, list[tuple[Path, str]]] = {}
    for series_uid, path, sha in rows:
        series.setdefault(series_uid, []).append((ctx.spool_root / path, sha))
    log.info("analysis.started study=%s series=%d instances=%d called_ae=%s", study_uid, len(series), len(rows),
             called_ae_title or "-")
    try:
        outcome = ctx.analyzer.analyze_study(series, called_ae_title=called_ae_title)
    except Exception as exc:
        with ctx.db.session() as s:
            _set_state(s, study_uid, StudyState.FAILED, error=f"{type(exc).__name__}: {exc}")
            audit.record(s, "system", "analysis.failed", study_uid, error=type(exc).__name__)
        raise
    with ctx.db.session() as s:
        study = s.get(Study, study_uid)
        assert study is not None
        if study.state != StudyState.ANALYZING.value:
            log.info("analysis.discarded study=%s reason=reopened", study_uid)
            return
        if outcome is None:
            study.state = StudyState.SKIPPED.value
            study.error = "no routing rule matched any series of this study"
            audit.record(s, "system", "analysis.skipped", study_uid)
            return
        result = outcome.result
        now = datetime.now(UTC)
        s.execute(update(Analysis).where(Analysis.study_instance_uid == study_uid).values(current=False))
        timings = dict(result.timings)
        timings["last_instance_to_stored_s"] = (now - study.last_received_at).total_seconds()
        analysis = Analysis(
            study_instance_uid=study_uid, series_instance_uid=result.series_instance_uid,
            model_id=result.identity.model_id, model_version=result.identity.version,
            weights_sha256=result.identity.weights_sha256, device_uid=result.identity.device_uid,
            input_sha256=result.input_sha256, routing_rule=outcome.rule_name, current=True,
            created_at=now, timings=timings,
        )
        s.add(analysis)
        for det in result.detections:
            analysis.findings.append(Finding(
                tracking_uid=generate_uid(), label=det.label,
                center_x_mm=det.center_mm[0], center_y_mm=det.center_mm[1], center_z_mm=det.center_mm[2],
                diameter_mm=det.diameter_mm, volume_mm3=det.volume_mm3, confidence=det.confidence,
            ))
        study.state = StudyState.READY.value
        study.error = ""
        s.flush()
        queue_shadow(s, analysis)  # a candidate version set to run in shadow (never shown) runs next
        if ctx.settings.preliminary_sr:
            queue.enqueue(s, JobKind.REPORT_PRELIMINARY.value, study_uid)
        audit.record(s, "system", "analysis.completed", study_uid, model=result.identity.model_id,
                     version=result.identity.version, findings=len(result.detections))
    log.info("analysis.completed study=%s findings=%d timings=%s", study_uid, len(result.detections), timings)


# --- report_study --------------------------------------------------------------------------------

def report_study(ctx: TaskContext, study_uid: str, payload: dict[str, Any]) -> None:
    """After sign-off: write the signed SR (accepted, edited and added findings), the FHIR
    DiagnosticReport, and, when an AI result already sent was rejected, an IOCM rejection note that
    withdraws it; queue the DICOM objects for every destination. After a study is rejected as a
    whole, only the withdrawal is done."""
    from reporting import build_measurement_report, encode_part10
    from reporting.fhir import StudyInfo, build_diagnostic_report
    from review.decisions import report_findings

    with ctx.db.session() as s:
        study = s.get(Study, study_uid)
        analysis = s.scalar(
            select(Analysis).where(Analysis.study_instance_uid == study_uid, Analysis.current.is_(True))
        )
        if study is None or analysis is None or study.state not in (StudyState.SIGNED.value,
                                                                     StudyState.REJECTED.value):
            raise ValueError(f"study {study_uid} has no signed analysis to report")
        signer = s.scalar(select(User).where(User.name == study.signed_by))
        observer = Observer(name=(signer.display_name or signer.name) if signer else study.signed_by,
                            organization=ctx.settings.institution)
        rejected_ai = [f.tracking_uid for f in analysis.findings
                       if f.source == "ai" and (f.decision == "reject" or f.edited_at is not None)]
        preliminary = s.scalars(select(Report).where(Report.study_instance_uid == study_uid,
                                                     Report.kind == PRELIMINARY_KIND)).all()
        withdraw = [(r.id, Path(r.path)) for r in preliminary] if (
            study.state == StudyState.REJECTED.value or rejected_ai) else []
        why = (f"Study rejected for AI review by {observer.name}: {study.review_note}"
               if study.state == StudyState.REJECTED.value else
               f"AI result(s) rejected or corrected by {observer.name} at sign-off: "
               f"{len(rejected_ai)} finding(s); see the signed report")
        if study.state == StudyState.REJECTED.value:
            sign_off = None
        else:
            paths = s.scalars(
                select(Instance.path).where(Instance.series_instance_uid == analysis.series_instance_uid,
                                            Instance.current.is_(True))
            ).all()
            identity = _identity(ctx, analysis)
            findings = report_findings(s, analysis, ctx.settings.institution)
            study_info = StudyInfo(study_uid, study.patient_id, study.patient_name, study.accession_number)
            sign_off = (paths, identity, findings, study.lung_rads or None, study_info)
    written: list[tuple[str, str, str, Path, int]] = []  # kind, sop uid, sop class, path, count
    if withdraw:
        written.append(_withdraw(ctx, study_uid, withdraw, observer, why))
    if sign_off is not None:
        paths, identity, findings, lung_rads, study_info = sign_off
        evidence = [pydicom.dcmread(ctx.spool_root / p, stop_before_pixels=True) for p in paths]
        sr = build_measurement_report(evidence, findings, identity, verifier=observer,
                                      institution=ctx.settings.institution, lung_rads=lung_rads)
        out = ctx.settings.reports_path / study_uid / f"{sr.SOPInstanceUID}.dcm"
        write_durably(out, encode_part10(sr))
        written.append(("sr", sr.SOPInstanceUID, sr.SOPClassUID, out, len(findings)))
        bundle = build_diagnostic_report(study_info, findings, identity, verifier=observer,
                                         sr_sop_instance_uid=sr.SOPInstanceUID, issued=datetime.now(UTC),
                                         lung_rads=lung_rads or "")
        fhir_out = ctx.settings.fhir_path / study_uid / f"{sr.SOPInstanceUID}.json"
        write_durably(fhir_out, bundle.model_dump_json(indent=2).encode())
    with ctx.db.session() as s:
        for kind, sop_uid, sop_class, path, count in written:
            _store_and_queue(ctx, s, study_uid, kind, sop_uid, sop_class, path)
            audit.record(s, "system", "report.created" if kind == "sr" else "report.withdrawal_created", sop_uid,
                         study=study_uid, kind=kind, findings=count, destinations=len(ctx.settings.destinations))
        for report_id, _ in withdraw:
            row = s.get(Report, report_id)
            if row is not None:
                row.kind = WITHDRAWN_KIND
        if sign_off is not None:
            audit.record(s, "system", "fhir.written", study_uid, reports=1)
    log.info("report.created study=%s objects=%s", study_uid, [w[0] for w in written])


PRELIMINARY_KIND = "sr-preliminary"
WITHDRAWN_KIND = "sr-withdrawn"


def _identity(ctx: TaskContext, analysis: Analysis) -> ModelIdentity:
    return ModelIdentity(
        model_id=analysis.model_id, version=analysis.model_version,
        name=analysis.model_id, manufacturer=ctx.settings.institution, device_uid=analysis.device_uid,
        weights_sha256=analysis.weights_sha256,
    )


def _withdraw(ctx: TaskContext, study_uid: str, reports: list[tuple[int, Path]], observer: Observer,
              why: str) -> tuple[str, str, str, Path, int]:
    """An IOCM rejection note (KOS, "Rejected for Quality Reasons") for the preliminary reports."""
    from reporting import encode_part10
    from reporting.kos import build_rejection_note

    rejected = [pydicom.dcmread(path, stop_before_pixels=True) for _, path in reports]
    kos = build_rejection_note(rejected, observer=observer, institution=ctx.settings.institution, reason=why)
    out = ctx.settings.reports_path / study_uid / f"{kos.SOPInstanceUID}.dcm"
    write_durably(out, encode_part10(kos))
    return "kos", kos.SOPInstanceUID, kos.SOPClassUID, out, len(rejected)


def _store_and_queue(ctx: TaskContext, s: Session, study_uid: str, kind: str, sop_uid: str, sop_class: str,
                     path: Path) -> None:
    report = Report(study_instance_uid=study_uid, sop_instance_uid=sop_uid, sop_class_uid=sop_class, kind=kind,
                    path=str(path), created_at=datetime.now(UTC))
    s.add(report)
    s.flush()
    for dest in ctx.settings.destinations:
        item = OutboxItem(destination=dest.name, report_id=report.id, state=OutboxState.PENDING.value,
                          attempts=0, next_attempt_at=datetime.now(UTC), created_at=datetime.now(UTC))
        s.add(item)
        s.flush()
        queue.enqueue(s, SEND_OUTBOX, str(item.id), dedupe=False)


# --- report_preliminary (optional: settings.preliminary_sr) --------------------------------------------

def report_preliminary(ctx: TaskContext, study_uid: str, payload: dict[str, Any]) -> None:
    """Send the AI's findings at once as an UNVERIFIED SR (for PACS that show AI results before
    review). A radiologist's later rejection withdraws it with a rejection note (see report_study)."""
    from reporting import build_measurement_report, encode_part10

    with ctx.db.session() as s:
        study = s.get(Study, study_uid)
        analysis = s.scalar(
            select(Analysis).where(Analysis.study_instance_uid == study_uid, Analysis.current.is_(True))
        )
        if study is None or analysis is None or study.state != StudyState.READY.value:
            log.info("report.preliminary_skipped study=%s", study_uid)
            return
        paths = s.scalars(select(Instance.path).where(
            Instance.series_instance_uid == analysis.series_instance_uid, Instance.current.is_(True))).all()
        identity = _identity(ctx, analysis)
        findings = [
            ReportFinding(tracking_id=f"AI nodule {n}", tracking_uid=f.tracking_uid,
                          center_mm=(f.center_x_mm, f.center_y_mm, f.center_z_mm), diameter_mm=f.diameter_mm,
                          volume_mm3=f.volume_mm3, confidence=f.confidence)
            for n, f in enumerate((f for f in analysis.findings if f.source == "ai"), start=1)
        ]
    evidence = [pydicom.dcmread(ctx.spool_root / p, stop_before_pixels=True) for p in paths]
    sr = build_measurement_report(evidence, findings, identity, verifier=None, institution=ctx.settings.institution,
                                  series_number=9000)
    out = ctx.settings.reports_path / study_uid / f"{sr.SOPInstanceUID}.dcm"
    write_durably(out, encode_part10(sr))
    with ctx.db.session() as s:
        _store_and_queue(ctx, s, study_uid, PRELIMINARY_KIND, sr.SOPInstanceUID, sr.SOPClassUID, out)
        audit.record(s, "system", "report.preliminary_created", sr.SOPInstanceUID, study=study_uid,
                     findings=len(findings), destinations=len(ctx.settings.destinations))
    log.info("report.preliminary study=%s sr=%s findings=%d", study_uid, sr.SOPInstanceUID, len(findings))


# --- send_outbox ---------------------------------------------------------------------------------

def send_outbox(ctx: TaskContext, item_key: str, payload: dict[str, Any]) -> None:
    """Send one outbox item; retry transient failures with exponential backoff, dead-letter the rest;
    obtain storage commitment where the destination asks for it (``tamsoat.sending``)."""
    from tamsoat.sending import send_item

    send_item(ctx, item_key, payload)


def _set_state(s: Session, study_uid: str, state: StudyState, error: str = "") -> None:
    study = s.get(Study, study_uid)
    if study is not None:
        study.state = state.value
        study.error = error


TASKS: dict[str, Callable[[TaskContext, str, dict[str, Any]], None]] = {
    ANALYZE_STUDY: analyze_study,
    REPORT_STUDY: report_study,
    SEND_OUTBOX: send_outbox,
    JobKind.REPORT_PRELIMINARY.value: report_preliminary,
    JobKind.SHADOW_ANALYZE.value: shadow_analyze,
    JobKind.EXPORT_DATASET.value: export_dataset_task,
}
# Long jobs: the embedded runner's sender thread never takes them, so results keep flowing meanwhile.
HEAVY_KINDS = (ANALYZE_STUDY, JobKind.SHADOW_ANALYZE.value, JobKind.EXPORT_DATASET.value)
