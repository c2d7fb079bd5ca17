"""Research exports as the service runs them: who may export, the snapshot's database row, the audit.

The snapshot itself is written by ``training.snapshot`` (de-identification in ``training.deidentify``). The
CLI (``tamsoat dataset export``), the API (``POST /api/v1/datasets``) and the ``export_dataset`` job all
come through ``export_dataset`` / ``run_export`` here, so every export is checked and audited the same way.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tamsoat.core import audit, queue
from tamsoat.core.db import Database
from tamsoat.core.domain import JobKind, Role, StudyState
from tamsoat.core.settings import Settings
from tamsoat.core.tables import DatasetSnapshot, Study, User

if TYPE_CHECKING:
    from tamsoat.tasks import TaskContext
    from training.snapshot import SnapshotSummary

log = logging.getLogger(__name__)

EXPORT_ROLES = (Role.RESEARCHER, Role.ADMIN)
PROMOTE_ROLES = (Role.ADMIN,)
EXPORT_DATASET = JobKind.EXPORT_DATASET.value


class AccessDenied(PermissionError):
    """The named user may not do this (unknown, inactive, or without the role)."""


def check_user(s: Session, name: str, roles: tuple[Role, ...]) -> User:
    """The active user ``name`` holding one of ``roles``; AccessDenied otherwise (one sentence)."""
    user = s.scalar(select(User).where(User.name == name))
    if user is None or not user.active:
        raise AccessDenied(f"no active user named {name!r} in this installation's database")
    if user.role not in {r.value for r in roles}:
        wanted = " or ".join(r.value for r in roles)
        raise AccessDenied(f"user {name!r} has the role {user.role!r}; this needs {wanted}")
    return user


def since_datetime(value: date | datetime | str | None) -> datetime | None:
    """``--since``: a date (midnight UTC) or an ISO datetime."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value) if "T" in value or " " in value else date.fromisoformat(value)
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.combine(value, time.min, tzinfo=UTC)


def eligible_studies(s: Session, since: datetime | None) -> int:
    query = select(func.count()).select_from(Study).where(Study.state == StudyState.SIGNED.value)
    if since is not None:
        query = query.where(Study.signed_at >= since)
    return int(s.scalar(query) or 0)


@dataclass(frozen=True)
class ExportRequest:
    snapshot_id: str
    actor: str
    out_parent: Path
    since: datetime | None


def plan_export(db: Database, actor: str, out_parent: Path, *, since: datetime | None = None,
                name: str | None = None, remote: str = "") -> ExportRequest:
    """Record a queued export (its id reserved) and audit the request."""
    from training.snapshot import SNAPSHOT_ID_PATTERN, SnapshotError, new_snapshot_id

    now = datetime.now(UTC)
    snapshot_id = name or new_snapshot_id(now)
    if not re.fullmatch(SNAPSHOT_ID_PATTERN, snapshot_id):
        raise SnapshotError(f"snapshot name {snapshot_id!r} is not allowed: use letters, digits, '.', '_', '-'")
    if (Path(out_parent) / snapshot_id).exists():
        raise SnapshotError(f"{Path(out_parent) / snapshot_id} already exists; choose another snapshot name")
    with db.session() as s:
        if s.get(DatasetSnapshot, snapshot_id) is not None:
            raise SnapshotError(f"a snapshot named {snapshot_id!r} was already exported")
        s.add(DatasetSnapshot(id=snapshot_id, state="queued", requested_by=actor, created_at=now,
                              since=since.isoformat() if since else "", path=str(Path(out_parent) / snapshot_id),
                              counts={}))
        audit.record(s, actor, "dataset.export_requested", snapshot_id, remote=remote,
                     since=since.isoformat() if since else "")
    return ExportRequest(snapshot_id, actor, Path(out_parent), since)


def run_export(db: Database, settings: Settings, request: ExportRequest) -> SnapshotSummary:
    """Write the planned snapshot: collect the signed studies, de-identify, write, audit ``dataset.exported``."""
    from training.snapshot import collect_reviewed, write_snapshot

    with db.session() as s:
        row = s.get(DatasetSnapshot, request.snapshot_id)
        if row is not None:
            row.state = "running"
        studies, excluded = collect_reviewed(s, settings.spool_path, since=request.since)
    try:
        summary = write_snapshot(studies, request.out_parent, snapshot_id=request.snapshot_id, excluded=excluded,
                                 since=request.since.date().isoformat() if request.since else "")
    except Exception as exc:
        with db.session() as s:
            row = s.get(DatasetSnapshot, request.snapshot_id)
            if row is not None:
                row.state, row.error, row.finished_at = "failed", f"{type(exc).__name__}: {exc}", datetime.now(UTC)
            audit.record(s, request.actor, "dataset.export_failed", request.snapshot_id, error=type(exc).__name__)
        raise
    counts = summary.counts
    with db.session() as s:
        row = s.get(DatasetSnapshot, request.snapshot_id)
        if row is not None:
            row.state, row.finished_at, row.counts = "done", datetime.now(UTC), counts
            row.manifest_sha256, row.path = summary.manifest_sha256, str(summary.path)
        # Counts only: no names, IDs, dates or UIDs of patients.
        audit.record(s, request.actor, "dataset.exported", request.snapshot_id, cases=counts["cases"],
                     patients=counts["patients"], positives=counts["positives"],
                     hard_negatives=counts["hard_negatives"], excluded=sum(counts["excluded"].values()),
                     manifest_sha256=summary.manifest_sha256)
    log.info("dataset.exported snapshot=%s cases=%d", request.snapshot_id, counts["cases"])
    return summary


def export_dataset(db: Database, settings: Settings, actor: str, out_parent: Path, *,
                   since: datetime | None = None, name: str | None = None, remote: str = "") -> SnapshotSummary:
    """Plan and run an export now (the caller has checked the actor's role)."""
    return run_export(db, settings, plan_export(db, actor, out_parent, since=since, name=name, remote=remote))


def queue_export(db: Database, request: ExportRequest) -> None:
    with db.session() as s:
        queue.enqueue(s, EXPORT_DATASET, request.snapshot_id, {
            "actor": request.actor, "out_parent": str(request.out_parent),
            "since": request.since.isoformat() if request.since else ""}, dedupe=False)


def export_dataset_task(ctx: TaskContext, key: str, payload: dict[str, Any]) -> None:
    """The ``export_dataset`` job: an export the API queued because it was too large to run in the request."""
    request = ExportRequest(snapshot_id=key, actor=str(payload["actor"]), out_parent=Path(payload["out_parent"]),
                            since=since_datetime(payload.get("since") or None))
    run_export(ctx.db, ctx.settings, request)


def snapshot_row(row: DatasetSnapshot) -> dict[str, Any]:
    return {"snapshot_id": row.id, "state": row.state, "requested_by": row.requested_by,
            "created_at": row.created_at, "finished_at": row.finished_at, "since": row.since or None,
            "path": row.path, "counts": row.counts, "manifest_sha256": row.manifest_sha256 or None,
            "error": row.error or None}
