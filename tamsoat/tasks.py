"""Task functions: one per job kind. The embedded runner and (later) Celery workers call these same
functions; each takes a ``TaskContext``, the job's key and its payload."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
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

                torch.set_num_threads(self.settings.inference_threads)  # process-wide: resampling uses torch
                self._analyzer = Engine(self.settings.models_dir, self.settings.routing_file,
                                        threads=self.settings.inference_threads)
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
        rows = s.execute(
            select(Instance.series_instance_uid, Instance.path, Instance.sha256)
            .where(Instance.study_instance_uid == study_uid, Instance.current.is_(True))
        ).all()
    series: dict[str, list[tuple[Path, str]]] = {}
    for series_uid, path, sha in rows:
        series.setdefault(series_uid, []).append((ctx.spool_root / path, sha))
    log.info("analysis.started study=%s series=%d instances=%d", study_uid, len(series), len(rows))
    try:
        outcome = ctx.analyzer.analyze_study(series)
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
        audit.record(s, "system", "analysis.completed", study_uid, model=result.identity.model_id,
                     version=result.identity.version, findings=len(result.detections))
    log.info("analysis.completed study=%s findings=%d timings=%s", study_uid, len(result.detections), timings)


# --- report_study --------------------------------------------------------------------------------

def report_study(ctx: TaskContext, study_uid: str, payload: dict[str, Any]) -> None:
    """Write the signed SR for a study and queue it for every destination."""
    from reporting import build_measurement_report, encode_part10

    with ctx.db.session() as s:
        study = s.get(Study, study_uid)
        analysis = s.scalar(
            select(Analysis).where(Analysis.study_instance_uid == study_uid, Analysis.current.is_(True))
        )
        if study is None or analysis is None or study.state != StudyState.SIGNED.value:
            raise ValueError(f"study {study_uid} has no signed analysis to report")
        signer = s.scalar(select(User).where(User.name == study.signed_by))
        paths = s.scalars(
            select(Instance.path).where(Instance.series_instance_uid == analysis.series_instance_uid,
                                        Instance.current.is_(True))
        ).all()
        identity = ModelIdentity(
            model_id=analysis.model_id, version=analysis.model_version,
            name=analysis.model_id, manufacturer=ctx.settings.institution, device_uid=analysis.device_uid,
            weights_sha256=analysis.weights_sha256,
        )
        accepted = [
            ReportFinding(
                tracking_id=f"Nodule {n}", tracking_uid=f.tracking_uid,
                center_mm=(f.center_x_mm, f.center_y_mm, f.center_z_mm), diameter_mm=f.diameter_mm,
                volume_mm3=f.volume_mm3, confidence=f.confidence, decided_by=f.decided_by,
            )
            for n, f in enumerate((f for f in analysis.findings if f.decision == "accept"), start=1)
        ]
        observer = Observer(name=(signer.display_name or signer.name) if signer else study.signed_by,
                            organization=ctx.settings.institution)
    evidence = [pydicom.dcmread(ctx.spool_root / p, stop_before_pixels=True) for p in paths]
    sr = build_measurement_report(evidence, accepted, identity, verifier=observer,
                                  institution=ctx.settings.institution)
    out = ctx.settings.reports_path / study_uid / f"{sr.SOPInstanceUID}.dcm"
    write_durably(out, encode_part10(sr))
    with ctx.db.session() as s:
        report = Report(study_instance_uid=study_uid, sop_instance_uid=sr.SOPInstanceUID,
                        sop_class_uid=sr.SOPClassUID, kind="sr", path=str(out), created_at=datetime.now(UTC))
        s.add(report)
        s.flush()
        for dest in ctx.settings.destinations:
            item = OutboxItem(destination=dest.name, report_id=report.id, state=OutboxState.PENDING.value,
                              attempts=0, next_attempt_at=datetime.now(UTC), created_at=datetime.now(UTC))
            s.add(item)
            s.flush()
            queue.enqueue(s, SEND_OUTBOX, str(item.id), dedupe=False)
        audit.record(s, "system", "report.created", sr.SOPInstanceUID, study=study_uid,
                     findings=len(accepted), destinations=len(ctx.settings.destinations))
    log.info("report.created study=%s sr=%s findings=%d", study_uid, sr.SOPInstanceUID, len(accepted))


# --- send_outbox ---------------------------------------------------------------------------------

def send_outbox(ctx: TaskContext, item_key: str, payload: dict[str, Any]) -> None:
    """Send one outbox item; retry transient failures with exponential backoff, dead-letter the rest."""
    with ctx.db.session() as s:
        item = s.get(OutboxItem, int(item_key))
        if item is None or item.state != OutboxState.PENDING.value:
            return
        report = s.get(Report, item.report_id)
        assert report is not None
        dest = next((d for d in ctx.settings.destinations if d.name == item.destination), None)
        path = Path(report.path)
        attempts = item.attempts + 1
    if dest is None:
        _outbox_result(ctx, item_key, OutboxState.DEAD, None, f"destination {item.destination!r} is not configured")
        return
    result = ctx.sender(dest, [path], ctx.settings.dicom.ae_title)[0]
    if result.outcome == "success":
        _outbox_result(ctx, item_key, OutboxState.SENT, result.status, result.message)
        log.info("outbox.sent item=%s dest=%s status=%s", item_key, dest.name, result.status)
    elif result.outcome == "retry" and attempts < ctx.settings.send_retry_max_attempts:
        delay = ctx.settings.send_retry_base_s * 2 ** (attempts - 1)
        _outbox_result(ctx, item_key, OutboxState.PENDING, result.status, result.message, delay_s=delay)
        raise RetryLater(f"send to {dest.name} failed: {result.message}", delay)
    else:
        _outbox_result(ctx, item_key, OutboxState.DEAD, result.status, result.message)
        log.error("outbox.dead item=%s dest=%s status=%s", item_key, dest.name, result.status)


def _outbox_result(ctx: TaskContext, item_key: str, state: OutboxState, status: int | None, message: str,
                   delay_s: float = 0.0) -> None:
    with ctx.db.session() as s:
        item = s.get(OutboxItem, int(item_key))
        assert item is not None
        now = datetime.now(UTC)
        item.attempts += 1
        item.state = state.value
        item.last_status = status
        item.error = "" if state == OutboxState.SENT else message
        if state == OutboxState.SENT:
            item.sent_at = now
        item.next_attempt_at = now + timedelta(seconds=delay_s)
        if state != OutboxState.PENDING:
            audit.record(s, "system", f"outbox.{state.value}", str(item.id), destination=item.destination,
                         status=status)


def _set_state(s: Session, study_uid: str, state: StudyState, error: str = "") -> None:
    study = s.get(Study, study_uid)
    if study is not None:
        study.state = state.value
        study.error = error


TASKS: dict[str, Callable[[TaskContext, str, dict[str, Any]], None]] = {
    ANALYZE_STUDY: analyze_study,
    REPORT_STUDY: report_study,
    SEND_OUTBOX: send_outbox,
}
