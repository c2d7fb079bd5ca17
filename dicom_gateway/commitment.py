"""Storage Commitment Push Model (PS3.4 Annex J) as SCU: after sending results, ask the PACS to
commit to keeping them (N-ACTION), and learn its answer (N-EVENT-REPORT).

The PACS may send the N-EVENT-REPORT on the same association, before we release it (we wait up to
``wait_s``), or later on an association it opens to our SCP (the SCP hands such reports to its
``commitment_sink``; see :func:`parse_report`). Either way the report names the Transaction UID
of our request, which is how it is matched to what we sent.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydicom.dataset import Dataset
from pynetdicom import evt

from dicom_gateway.scu import ScuTimeouts, _associate, _make_ae, _not_established
from tamsoat.core.settings import Destination, DicomTLS

__all__ = [
    "STORAGE_COMMITMENT_PUSH",
    "STORAGE_COMMITMENT_PUSH_INSTANCE",
    "CommitmentReport",
    "CommitmentResult",
    "parse_report",
    "request_commitment",
]

LOG = logging.getLogger(__name__)

STORAGE_COMMITMENT_PUSH = "1.2.840.10008.1.20.1"
STORAGE_COMMITMENT_PUSH_INSTANCE = "1.2.840.10008.1.20.1.1"  # the well-known SOP Instance
_REQUEST_COMMIT = 1  # N-ACTION Action Type ID
# N-ACTION statuses meaning "this peer does not do storage commitment": asking again will not help.
_UNSUPPORTED = {0x0112, 0x0118, 0x0119, 0x0122, 0x0123, 0x0124}

SopRef = tuple[str, str]  # (SOP Class UID, SOP Instance UID)


@dataclass(frozen=True)
class CommitmentReport:
    """An N-EVENT-REPORT: which instances of transaction ``transaction_uid`` the PACS committed to
    keep, and which it could not (with the Failure Reason)."""

    transaction_uid: str
    committed: list[SopRef] = field(default_factory=list)
    failed: list[tuple[str, str, int]] = field(default_factory=list)


@dataclass(frozen=True)
class CommitmentResult:
    """``committed``: every reference committed. ``failed``: the PACS refused some (send them again).
    ``waiting``: request accepted, no report yet (it may come later to our SCP). ``retry``: the request
    did not get through (network, rejected association, busy). ``unsupported``: the peer does not
    do storage commitment."""

    outcome: Literal["committed", "failed", "waiting", "retry", "unsupported"]
    message: str
    report: CommitmentReport | None = None


def parse_report(event_type_id: int, info: Dataset) -> CommitmentReport:
    """Read the Event Information of a Storage Commitment N-EVENT-REPORT (type 1: all committed,
    type 2: some failed)."""
    committed = [(str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID))
                 for i in info.get("ReferencedSOPSequence", [])]
    failed = [(str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID), int(i.get("FailureReason", 0x0110)))
              for i in info.get("FailedSOPSequence", [])]
    if event_type_id == 2 and not failed:
        LOG.warning("commitment.report_type2_without_failures transaction=%s", info.get("TransactionUID", ""))
    return CommitmentReport(str(info.get("TransactionUID", "")), committed, failed)


def request_commitment(
    destination: Destination,
    refs: Sequence[SopRef],
    calling_ae: str,
    transaction_uid: str,
    *,
    wait_s: float = 10.0,
    timeouts: ScuTimeouts | None = None,
    tls_config: DicomTLS | None = None,
) -> CommitmentResult:
    """Send one Storage Commitment request and wait up to ``wait_s`` for its report on the same
    association. Never raises for a peer or network problem."""
    ae = _make_ae(calling_ae, timeouts or ScuTimeouts())
    ae.add_requested_context(STORAGE_COMMITMENT_PUSH)
    got_report = threading.Event()
    reports: list[CommitmentReport] = []

    def on_report(event: evt.Event) -> tuple[int, Dataset | None]:
        request: Any = event.request
        try:
            report = parse_report(int(request.EventTypeID), event.event_information)
        except Exception as exc:
            LOG.warning("commitment.report_unreadable error=%s", type(exc).__name__)
            return 0x0110, None
        if report.transaction_uid == transaction_uid:
            reports.append(report)
            got_report.set()
        else:
            LOG.warning("commitment.report_other_transaction destination=%s", destination.name)
        return 0x0000, None

    try:
        assoc = _associate(ae, destination, tls_config, evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)])
    except Exception as exc:
        return CommitmentResult("retry", f"could not associate: {type(exc).__name__}: {exc}")
    if not assoc.is_established:
        accepted = assoc.acceptor.primitive
        if accepted is not None and accepted.result == 0x00 and not assoc.accepted_contexts:
            # Associated, but our only presentation context was refused (pynetdicom then aborts).
            return CommitmentResult("unsupported", "the peer does not accept Storage Commitment Push Model")
        return CommitmentResult("retry", _not_established(assoc))
    try:
        if not assoc.accepted_contexts:
            return CommitmentResult("unsupported", "the peer does not accept Storage Commitment Push Model")
        info = Dataset()
        info.TransactionUID = transaction_uid
        items = []
        for sop_class, sop_instance in refs:
            item = Dataset()
            item.ReferencedSOPClassUID = sop_class
            item.ReferencedSOPInstanceUID = sop_instance
            items.append(item)
        info.ReferencedSOPSequence = items
        status, _reply = assoc.send_n_action(info, _REQUEST_COMMIT, STORAGE_COMMITMENT_PUSH,
                                             STORAGE_COMMITMENT_PUSH_INSTANCE)
        code = int(status.Status) if status is not None and "Status" in status else None
        if code is None:
            return CommitmentResult("retry", "no N-ACTION response (timeout or abort)")
        if code in _UNSUPPORTED:
            return CommitmentResult("unsupported", f"N-ACTION refused with status 0x{code:04X}")
        if code != 0x0000:
            return CommitmentResult("retry", f"N-ACTION status 0x{code:04X}")
        got_report.wait(wait_s)
    finally:
        if assoc.is_established:
            assoc.release()
    if not reports:
        return CommitmentResult("waiting", "commitment requested; no report yet")
    return outcome_of(reports[0], refs)


def outcome_of(report: CommitmentReport, refs: Sequence[SopRef]) -> CommitmentResult:
    """What a report means for the references we asked about."""
    failed = {(c, i): reason for c, i, reason in report.failed}
    missing = [r for r in refs if r in failed]
    if missing:
        reasons = ", ".join(sorted({f"0x{failed[r]:04X}" for r in missing}))
        return CommitmentResult("failed", f"not committed by the destination (Failure Reason {reasons})", report)
    if all(r in set(report.committed) for r in refs):
        return CommitmentResult("committed", "committed", report)
    return CommitmentResult("waiting", "report does not cover every instance", report)
