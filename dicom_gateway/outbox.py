"""The outbox as an administrator sees it: what is waiting, what was dead-lettered and why, and a
way to send an item again. Used by the CLI (``tamsoat outbox``), the admin API and the metrics.

Sending itself is the ``send_outbox`` task (``tamsoat.tasks``); this module only reads the outbox
and re-queues items, in the caller's transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from dicom_gateway.commitment import CommitmentReport
from tamsoat.core import audit, queue
from tamsoat.core.domain import JobKind, JobState, OutboxState
from tamsoat.core.tables import Job, OutboxItem, Report

__all__ = [
    "OPEN_STATES",
    "OutboxEntry",
    "OutboxError",
    "apply_commitment_report",
    "get_entry",
    "list_entries",
    "oldest_open_age_s",
    "outbox_depth",
    "retry_item",
]

# States in which an item still needs the service's attention (it is not done with yet).
OPEN_STATES = (OutboxState.PENDING.value, OutboxState.COMMITTING.value)
_RETRIABLE = (OutboxState.DEAD.value, OutboxState.PENDING.value)


class OutboxError(Exception):
    """An outbox operation that cannot be done; ``code`` is ``not_found`` or ``conflict``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class OutboxEntry:
    """One outbox item with the object it carries. Holds UIDs and ids only, never patient data."""

    id: int
    destination: str
    state: str
    attempts: int
    last_status: int | None
    error: str
    next_attempt_at: datetime
    created_at: datetime
    sent_at: datetime | None
    committed_at: datetime | None
    report_id: int
    sop_instance_uid: str
    study_instance_uid: str

    @property
    def last_status_hex(self) -> str:
        return "" if self.last_status is None else f"0x{self.last_status:04X}"


def _entry(item: OutboxItem, report: Report) -> OutboxEntry:
    return OutboxEntry(
        id=item.id, destination=item.destination, state=item.state, attempts=item.attempts,
        last_status=item.last_status, error=item.error, next_attempt_at=item.next_attempt_at,
        created_at=item.created_at, sent_at=item.sent_at, committed_at=item.committed_at,
        report_id=report.id, sop_instance_uid=report.sop_instance_uid,
        study_instance_uid=report.study_instance_uid,
    )


def list_entries(session: Session, state: str | None = None, destination: str | None = None,
                 limit: int = 100) -> list[OutboxEntry]:
    """Outbox items, newest first, optionally only those in ``state`` or for ``destination``."""
    query = select(OutboxItem, Report).join(Report, Report.id == OutboxItem.report_id)
    if state:
        query = query.where(OutboxItem.state == state)
    if destination:
        query = query.where(OutboxItem.destination == destination)
    rows = session.execute(query.order_by(OutboxItem.id.desc()).limit(limit)).all()
    return [_entry(item, report) for item, report in rows]


def get_entry(session: Session, item_id: int) -> OutboxEntry:
    row = session.execute(
        select(OutboxItem, Report).join(Report, Report.id == OutboxItem.report_id).where(OutboxItem.id == item_id)
    ).first()
    if row is None:
        raise OutboxError("not_found", f"no outbox item {item_id}")
    return _entry(row[0], row[1])


def retry_item(session: Session, item_id: int, actor: str, remote: str = "") -> OutboxEntry:
    """Send item ``item_id`` again now: a dead-lettered item gets a fresh set of attempts, a pending
    one skips the rest of its backoff wait. Refused while the item is being sent, or once it is sent.

    The send job is re-used when one is queued, so an item never has two jobs that could send it twice.
    """
    item = session.get(OutboxItem, item_id)
    if item is None:
        raise OutboxError("not_found", f"no outbox item {item_id}")
    if item.state not in _RETRIABLE:
        raise OutboxError("conflict", f"outbox item {item_id} is {item.state}; only dead or pending items "
                                      "can be retried")
    kind = JobKind.SEND_OUTBOX.value
    running = session.scalar(
        select(Job.id).where(Job.kind == kind, Job.key == str(item_id), Job.state == JobState.RUNNING.value)
    )
    if running is not None:
        raise OutboxError("conflict", f"outbox item {item_id} is being sent right now")
    now = datetime.now(UTC)
    previous = item.state
    if item.state == OutboxState.DEAD.value:
        item.attempts = 0  # a fresh set of attempts; the audit trail keeps the history
    item.state = OutboxState.PENDING.value
    item.next_attempt_at = now
    job = queue.enqueue(session, kind, str(item_id))  # re-uses a queued job for this item
    job.not_before = now
    audit.record(session, actor, "outbox.retried", str(item_id), remote=remote, destination=item.destination,
                 previous_state=previous, last_status=item.last_status)
    session.flush()
    return get_entry(session, item_id)


def outbox_depth(session: Session) -> dict[tuple[str, str], int]:
    """Item counts by (destination, state)."""
    rows = session.execute(
        select(OutboxItem.destination, OutboxItem.state, func.count()).group_by(OutboxItem.destination,
                                                                                 OutboxItem.state)
    ).all()
    return {(str(d), str(s)): int(n) for d, s, n in rows}


def oldest_open_age_s(session: Session, now: datetime | None = None) -> float | None:
    """Seconds since the oldest item still waiting to be sent or committed was created; None if none."""
    oldest = session.scalar(select(func.min(OutboxItem.created_at)).where(OutboxItem.state.in_(OPEN_STATES)))
    if oldest is None:
        return None
    if oldest.tzinfo is None:  # SQLite aggregates bypass the column type
        oldest = oldest.replace(tzinfo=UTC)
    return ((now or datetime.now(UTC)) - oldest).total_seconds()


def apply_commitment_report(session: Session, report: CommitmentReport, actor: str) -> int:
    """Apply a Storage Commitment report that came on its own association: items of its transaction
    become ``committed``, or go back to ``pending`` (sent again at once) when the PACS could not
    commit them. Returns how many items it concerned."""
    rows = session.execute(
        select(OutboxItem, Report).join(Report, Report.id == OutboxItem.report_id)
        .where(OutboxItem.commitment_uid == report.transaction_uid,
               OutboxItem.state == OutboxState.COMMITTING.value)
    ).all()
    failed = {(c, i): reason for c, i, reason in report.failed}
    committed = set(report.committed)
    now = datetime.now(UTC)
    for item, rep in rows:
        ref = (rep.sop_class_uid, rep.sop_instance_uid)
        if ref in failed:
            item.state = OutboxState.PENDING.value
            item.error = f"not committed by the destination (Failure Reason 0x{failed[ref]:04X})"
            item.next_attempt_at = now
            job = queue.enqueue(session, JobKind.SEND_OUTBOX.value, str(item.id))
            job.not_before = now
        elif ref in committed:
            item.state = OutboxState.COMMITTED.value
            item.committed_at = now
            item.error = ""
        else:
            continue
        audit.record(session, actor, f"outbox.{item.state}", str(item.id), destination=item.destination,
                     transaction=report.transaction_uid)
    return len(rows)
