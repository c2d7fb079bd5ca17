"""The sending side: C-STORE of Part-10 files to a destination (PACS), and C-ECHO, on our own
requestor (:mod:`dicom_gateway.requestor`).

Files are sent exactly as stored (the data set bytes after the File Meta Information, without
decoding) when the peer accepts the file's own transfer syntax. For an uncompressed little-endian
file the other little-endian syntax is proposed as a fallback, and the file is then decoded and
re-encoded. Every status is classified with :func:`dicom_gateway.status.classify_store_status`
into success / retry / dead.

``_make_ae``, ``_associate`` and ``_not_established`` set up the pynetdicom associations of
query/retrieve and storage commitment with the same timeouts and TLS.

Timeouts (connect, ACSE, DIMSE, network) are always set, so a dead peer never hangs a worker.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.association import Association

from dicom_gateway.header import scan_file_meta
from dicom_gateway.net import tune_connection
from dicom_gateway.pynetdicom_tuning import install as tune_pynetdicom
from dicom_gateway.requestor import AssociationError, Requestor, RequestorTimeouts
from dicom_gateway.status import Outcome, classify_store_status
from dicom_gateway.tls import client_context
from dicom_gateway.uids import validate_uid
from tamsoat.core.settings import Destination, DicomTLS

__all__ = ["EchoResult", "ScuTimeouts", "SendResult", "echo", "send_files"]

LOG = logging.getLogger(__name__)

VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"
MAX_CONTEXTS = 128  # PS3.8: at most 128 presentation contexts (odd IDs 1..255) per association
_LE_UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


@dataclass(frozen=True)
class ScuTimeouts:
    """Seconds. ``connect``: TCP connect; ``acse``: association set-up and release;
    ``dimse``: waiting for each response; ``network``: any read on an idle association (the
    pynetdicom associations of query/retrieve and storage commitment; a C-STORE or C-ECHO association
    is never idle: every read there waits for a response, bounded by ``dimse``)."""

    connect: float = 5.0
    acse: float = 10.0
    dimse: float = 60.0
    network: float = 60.0


@dataclass(frozen=True)
class SendResult:
    """The outcome for one file. ``status`` is the peer's C-STORE status, ``None`` when no status
    was received (not sent, rejected or aborted association, network error, timeout)."""

    path: Path
    status: int | None
    outcome: Outcome
    message: str


@dataclass(frozen=True)
class EchoResult:
    ok: bool
    message: str
    status: int | None = None


@dataclass(frozen=True)
class _File:
    index: int
    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    dataset_offset: int

    @property
    def key(self) -> tuple[str, str]:
        return (self.sop_class_uid, self.transfer_syntax_uid)


def _make_ae(calling_ae: str, timeouts: ScuTimeouts) -> AE:
    tune_pynetdicom()  # dicom_gateway.pynetdicom_tuning
    ae = AE(ae_title=calling_ae)
    ae.connection_timeout = timeouts.connect
    ae.acse_timeout = timeouts.acse
    ae.dimse_timeout = timeouts.dimse
    ae.network_timeout = timeouts.network
    return ae


def _associate(ae: AE, destination: Destination, tls_config: DicomTLS | None, **kwargs: Any) -> Association:
    """Associate with ``destination``, over DICOM TLS when the destination asks for it."""
    tls_args = (client_context(tls_config), destination.host) if destination.tls else None
    handlers = [(evt.EVT_CONN_OPEN, tune_connection), *kwargs.pop("evt_handlers", [])]
    return ae.associate(destination.host, destination.port, ae_title=destination.ae_title, tls_args=tls_args,
                        evt_handlers=handlers, **kwargs)


def _not_established(assoc: Association) -> str:
    if assoc.is_rejected:
        rsp = assoc.acceptor.primitive
        detail = ""
        if rsp is not None and rsp.result is not None:
            detail = f": {rsp.result_str}, {rsp.source_str}, {rsp.reason_str}"
        return f"association rejected{detail}"
    if assoc.is_aborted:
        # pynetdicom also reports a refused or failed TCP connection as an abort.
        return "could not associate: connection failed or association aborted"
    return "could not associate: no answer (timeout)"


def _contexts_for(f: _File) -> list[tuple[str, str]]:
    """The file's own (SOP class, transfer syntax) first; for uncompressed little endian also the
    other little-endian syntax, as a separate context so the peer can accept the exact one."""
    contexts = [f.key]
    if f.transfer_syntax_uid in _LE_UNCOMPRESSED:
        contexts += [(f.sop_class_uid, ts) for ts in _LE_UNCOMPRESSED if ts != f.transfer_syntax_uid]
    return contexts


def _batches(files: list[_File]) -> list[tuple[list[tuple[str, str]], list[_File]]]:
    """Split files into association batches of at most MAX_CONTEXTS presentation contexts."""
    batches: list[tuple[list[tuple[str, str]], list[_File]]] = []
    contexts: list[tuple[str, str]] = []
    members: list[_File] = []
    for f in files:
        if f.key not in contexts:
            new = [cx for cx in _contexts_for(f) if cx not in contexts]
            if len(contexts) + len(new) > MAX_CONTEXTS:
                batches.append((contexts, members))
                contexts, members = [], []
                new = _contexts_for(f)
            contexts.extend(new)
        members.append(f)
    if members:
        batches.append((contexts, members))
    return batches


_META_READ = 8192  # a File Meta Information is a few hundred bytes


def _read_meta(index: int, path: Path) -> _File:
    with path.open("rb") as fh:
        head = fh.read(_META_READ)
        if len(head) >= 144 and (total := 144 + int.from_bytes(head[140:144], "little")) > len(head):
            head += fh.read(total - len(head))  # a large optional element (e.g. Private Information)
        meta, offset = scan_file_meta(head)

    def uid(tag: int, name: str) -> str:
        return validate_uid(meta.get(tag, b"").decode("ascii", errors="replace"), name)

    return _File(
        index=index, path=path, sop_class_uid=uid(0x00020002, "MediaStorageSOPClassUID"),
        sop_instance_uid=uid(0x00020003, "MediaStorageSOPInstanceUID"),
        transfer_syntax_uid=uid(0x00020010, "TransferSyntaxUID"), dataset_offset=offset,
    )


def send_files(
    destination: Destination,
    paths: Sequence[Path],
    calling_ae: str,
    *,
    timeouts: ScuTimeouts | None = None,
    tls_config: DicomTLS | None = None,
) -> list[SendResult]:
    """C-STORE ``paths`` (Part-10 files) to ``destination``; one result per path, in order.

    One association carries every file (more than 128 distinct SOP class / transfer syntax pairs
    take several). Never raises for a peer or network problem: that is a ``retry`` result.
    ``tls_config`` is our certificate (and CA) for a destination with ``tls: true``.
    """
    timeouts = timeouts or ScuTimeouts()
    results: dict[int, SendResult] = {}
    files: list[_File] = []
    for i, raw_path in enumerate(paths):
        path = Path(raw_path)
        try:
            files.append(_read_meta(i, path))
        except Exception as exc:
            LOG.error("dicom.send.unreadable file=%s error=%s", path.name, type(exc).__name__)
            results[i] = SendResult(path, None, "dead", f"cannot read the file's meta information: {exc}")

    for batch_contexts, batch_files in _batches(files):
        for res_index, result in _send_batch(destination, batch_contexts, batch_files, calling_ae, timeouts,
                                             tls_config):
            results[res_index] = result
    unsent = SendResult(Path(), None, "retry", "not sent")
    return [results.get(i, replace(unsent, path=Path(p))) for i, p in enumerate(paths)]


def _send_batch(
    destination: Destination,
    contexts: list[tuple[str, str]],
    files: list[_File],
    calling_ae: str,
    timeouts: ScuTimeouts,
    tls_config: DicomTLS | None = None,
) -> list[tuple[int, SendResult]]:
    try:
        requestor = _open(destination, calling_ae, contexts, timeouts, tls_config)
    except AssociationError as exc:
        LOG.warning("dicom.send.not_associated destination=%s reason=%s", destination.name, exc)
        return [(f.index, SendResult(f.path, None, "retry", str(exc))) for f in files]

    out: list[tuple[int, SendResult]] = []
    sendable: list[tuple[_File, str]] = []
    for f in files:
        syntax = f.transfer_syntax_uid if f.key in requestor.accepted else next(
            (ts for sop, ts in _contexts_for(f) if (sop, ts) in requestor.accepted), None)
        if syntax is None:
            message = "peer accepted no presentation context for this SOP class / transfer syntax"
            LOG.error("dicom.send.no_context sop=%s destination=%s", f.sop_instance_uid, destination.name)
            out.append((f.index, SendResult(f.path, None, "dead", message)))
        else:
            sendable.append((f, syntax))
    # The next file is read while the peer stores this one (at most two data sets in memory).
    with requestor, ThreadPoolExecutor(max_workers=1, thread_name_prefix="tamsoat-send-read") as reader:
        upcoming = reader.submit(_data_set, *sendable[0]) if sendable else None
        for i, (f, syntax) in enumerate(sendable):
            data, upcoming = upcoming, (reader.submit(_data_set, *sendable[i + 1]) if i + 1 < len(sendable) else None)
            assert data is not None
            if not requestor.is_open:
                out.append((f.index, SendResult(f.path, None, "retry", "association ended before sending")))
                continue
            out.append((f.index, _send_one(requestor, f, syntax, data, destination)))
    return out


def _open(destination: Destination, calling_ae: str, contexts: list[tuple[str, str]], timeouts: ScuTimeouts,
          tls_config: DicomTLS | None) -> Requestor:
    try:
        ssl_context = client_context(tls_config) if destination.tls else None
    except (OSError, ValueError) as exc:  # an unreadable certificate or key
        raise AssociationError(f"could not associate: {type(exc).__name__}: {exc}") from exc
    return Requestor.open(
        destination.host, destination.port, calling_ae_title=calling_ae, called_ae_title=destination.ae_title,
        contexts=contexts, ssl_context=ssl_context,
        timeouts=RequestorTimeouts(connect=timeouts.connect, acse=timeouts.acse, dimse=timeouts.dimse),
    )


def _data_set(f: _File, syntax: str) -> bytes | memoryview:
    """The file's data set bytes in ``syntax``: as stored when it is the file's own (a view of the
    file's bytes), else decoded and re-encoded (only between the two uncompressed little-endian
    syntaxes)."""
    raw = f.path.read_bytes()
    if syntax == f.transfer_syntax_uid:
        return memoryview(raw)[f.dataset_offset:]
    ds = dcmread(BytesIO(raw))
    buf = DicomBytesIO()
    buf.is_little_endian = True
    buf.is_implicit_VR = syntax == ImplicitVRLittleEndian
    write_dataset(buf, ds)
    return buf.getvalue()


def _send_one(requestor: Requestor, f: _File, syntax: str, reading: Future[bytes | memoryview],
              destination: Destination) -> SendResult:
    """Send one file in ``syntax`` (its own, or the accepted other little-endian one), once
    ``reading`` (:func:`_data_set`) has its bytes."""
    try:
        data = reading.result()
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        LOG.error("dicom.send.unreadable sop=%s error=%s", f.sop_instance_uid, type(exc).__name__)
        return SendResult(f.path, None, "dead", f"cannot read the file: {type(exc).__name__}: {exc}")
    except Exception as exc:
        LOG.error("dicom.send.error sop=%s error=%s", f.sop_instance_uid, type(exc).__name__)
        return SendResult(f.path, None, "dead", f"cannot send the file: {type(exc).__name__}: {exc}")
    try:
        rsp = requestor.c_store(requestor.accepted[(f.sop_class_uid, syntax)], f.sop_class_uid,
                                f.sop_instance_uid, data)
    except AssociationError as exc:
        LOG.warning("dicom.send.error sop=%s error=%s", f.sop_instance_uid, exc)
        return SendResult(f.path, None, "retry", f"send failed: {exc}")

    status = rsp.us(0x0900)
    comment = rsp.get(0x0902, b"").decode("ascii", errors="replace").rstrip("\x00 ") if status is not None else None
    verdict = classify_store_status(status, comment)
    if verdict.outcome == "success" and not verdict.warning:
        LOG.info("dicom.send.ok sop=%s destination=%s", f.sop_instance_uid, destination.name)
    elif verdict.outcome == "success":
        LOG.warning("dicom.send.warning sop=%s destination=%s reason=%s", f.sop_instance_uid, destination.name,
                    verdict.reason)
    else:
        LOG.warning("dicom.send.failed sop=%s destination=%s outcome=%s reason=%s", f.sop_instance_uid,
                    destination.name, verdict.outcome, verdict.reason)
    return SendResult(f.path, status, verdict.outcome, verdict.reason)


def echo(destination: Destination, calling_ae: str, *, timeouts: ScuTimeouts | None = None,
         tls_config: DicomTLS | None = None) -> EchoResult:
    """C-ECHO ``destination``; never raises for a peer or network problem."""
    try:
        requestor = _open(destination, calling_ae, [(VERIFICATION_SOP_CLASS, ImplicitVRLittleEndian)],
                          timeouts or ScuTimeouts(), tls_config)
    except AssociationError as exc:
        return EchoResult(False, str(exc))
    with requestor:
        context = requestor.accepted.get((VERIFICATION_SOP_CLASS, ImplicitVRLittleEndian))
        if context is None:
            return EchoResult(False, "the peer does not accept Verification")
        try:
            rsp = requestor.c_echo(context)
        except AssociationError as exc:
            return EchoResult(False, f"no C-ECHO response: {exc}")
    status = rsp.us(0x0900)
    if status == 0x0000:
        return EchoResult(True, "success", status)
    return EchoResult(False, f"C-ECHO status 0x{status or 0:04X}", status)
