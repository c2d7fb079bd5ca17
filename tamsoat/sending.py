"""The ``send_outbox`` task: send one outbox item to its destination, then (where the destination
asks for it) obtain storage commitment.

States: ``pending`` → C-STORE → ``sent`` (or, with storage commitment, ``committing`` → N-ACTION →
``committed``). Transient failures (0xA7xx, network, no commitment report yet) are retried with
exponential backoff (``send_retry_base_s`` · 2^(attempt-1)) up to ``send_retry_max_attempts``;
permanent ones (0xA9xx, 0xCxxx, commitment not supported) are dead-lettered with the reason. A
result the PACS refuses to commit is sent again. The result file is kept throughout.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydicom.uid import generate_uid

from dicom_gateway import metrics
from dicom_gateway.commitment import request_commitment
from tamsoat.core import audit
from tamsoat.core.domain import OutboxState
from tamsoat.core.tables import OutboxItem, Report

if TYPE_CHECKING:
    from tamsoat.tasks import TaskContext

log = logging.getLogger(__name__)


def send_item(ctx: TaskContext, item_key: str, payload: dict[str, Any]) -> None:
    """Run one ``send_outbox`` job for outbox item ``item_key``."""
    with ctx.db.session() as s:
        item = s.get(OutboxItem, int(item_key))
        if item is None or item.state not in (OutboxState.PENDING.value, OutboxState.COMMITTING.value):
            return
        report = s.get(Report, item.report_id)
        assert report is not None
        dest = next((d for d in ctx.settings.destinations if d.name == item.destination), None)
        path = Path(report.path)
        state = item.state
        ref = (report.sop_class_uid, report.sop_instance_uid)
        attempts = item.attempts + 1
    if dest is None:
        _result(ctx, item_key, OutboxState.DEAD, None, f"destination {item.destination!r} is not configured")
        return
    if state == OutboxState.PENDING.value:
        result = ctx.sender(dest, [path], ctx.settings.dicom.ae_title)[0]
        metrics.SEND_ATTEMPTS.labels(dest.name, result.outcome).inc()
        if result.outcome == "success" and dest.storage_commitment:
            _result(ctx, item_key, OutboxState.COMMITTING, result.status, "", sent=True)
            log.info("outbox.sent item=%s dest=%s status=%s commitment=requested", item_key, dest.name, result.status)
            attempts += 1
        elif result.outcome == "success":
            _result(ctx, item_key, OutboxState.SENT, result.status, result.message, sent=True)
            log.info("outbox.sent item=%s dest=%s status=%s", item_key, dest.name, result.status)
            return
        else:
            _failed(ctx, item_key, dest.name, attempts, result.outcome == "retry", result.status, result.message)
            return

    # Storage commitment. The transaction UID is stored before asking, so a report that comes back
    # later on another association can be matched to this item.
    transaction = str(generate_uid())
    with ctx.db.session() as s:
        item = s.get(OutboxItem, int(item_key))
        assert item is not None
        item.commitment_uid = transaction
    commit = request_commitment(dest, [ref], ctx.settings.dicom.ae_title, transaction,
                                wait_s=ctx.settings.commitment_wait_s, tls_config=ctx.settings.dicom.tls)
    with ctx.db.session() as s:
        item = s.get(OutboxItem, int(item_key))
        assert item is not None
        already = item.state == OutboxState.COMMITTED.value  # the report came on another association
    if already:
        return
    if commit.outcome == "committed":
        _result(ctx, item_key, OutboxState.COMMITTED, None, "", committed=True, keep_status=True)
        log.info("outbox.committed item=%s dest=%s", item_key, dest.name)
    elif commit.outcome == "failed":
        # The PACS does not have it after all: send it again.
        _failed(ctx, item_key, dest.name, attempts, True, None, commit.message, back_to=OutboxState.PENDING,
                keep_status=True)
    elif commit.outcome == "unsupported":
        _result(ctx, item_key, OutboxState.DEAD, None, f"storage commitment: {commit.message}", keep_status=True)
        log.error("outbox.dead item=%s dest=%s reason=commitment_unsupported", item_key, dest.name)
    else:  # waiting or retry: ask again later (the report may also arrive at our SCP meanwhile)
        _failed(ctx, item_key, dest.name, attempts, True, None, f"storage commitment: {commit.message}",
                back_to=OutboxState.COMMITTING, keep_status=True)


def _failed(ctx: TaskContext, item_key: str, destination: str, attempts: int, transient: bool,
            status: int | None, message: str, back_to: OutboxState = OutboxState.PENDING,
            keep_status: bool = False) -> None:
    from tamsoat.tasks import RetryLater

    if transient and attempts < ctx.settings.send_retry_max_attempts:
        delay = ctx.settings.send_retry_base_s * 2 ** (attempts - 1)
        metrics.SEND_RETRIES.labels(destination).inc()
        _result(ctx, item_key, back_to, status, message, delay_s=delay, keep_status=keep_status)
        raise RetryLater(f"send to {destination} failed: {message}", delay)
    _result(ctx, item_key, OutboxState.DEAD, status, message, keep_status=keep_status)
    log.error("outbox.dead item=%s dest=%s status=%s", item_key, destination, status)


def _result(ctx: TaskContext, item_key: str, state: OutboxState, status: int | None, message: str,
            delay_s: float = 0.0, sent: bool = False, committed: bool = False, keep_status: bool = False) -> None:
    """Record an attempt's outcome. ``keep_status``: a commitment step, which leaves the C-STORE status."""
    with ctx.db.session() as s:
        item = s.get(OutboxItem, int(item_key))
        assert item is not None
        now = datetime.now(UTC)
        item.attempts += 1
        item.state = state.value
        if not keep_status:
            item.last_status = status
        item.error = message if state in (OutboxState.PENDING, OutboxState.DEAD, OutboxState.COMMITTING) else ""
        if sent:
            item.sent_at = now
        if committed:
            item.committed_at = now
        item.next_attempt_at = now + timedelta(seconds=delay_s)
        if state not in (OutboxState.PENDING, OutboxState.COMMITTING):
            audit.record(s, "system", f"outbox.{state.value}", str(item.id), destination=item.destination,
                         status=status)
