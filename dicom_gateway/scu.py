"""The sending side: C-STORE of Part-10 files to a destination (PACS), and C-ECHO.

Files are sent exactly as stored (the data set bytes after the File Meta Information are streamed
without decoding) when the peer accepts the file's own transfer syntax. For an uncompressed
little-endian file the other little-endian syntax is proposed as a fallback, and the file is then
decoded and re-encoded by pynetdicom. Every status is classified with
:func:`dicom_gateway.status.classify_store_status` into success / retry / dead.

Timeouts (connect, ACSE, DIMSE, network) are always set, so a dead peer never hangs a worker.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filereader import read_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, _config, evt
from pynetdicom.association import Association

from dicom_gateway.net import tune_connection
from dicom_gateway.pynetdicom_tuning import install as tune_pynetdicom
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
    ``dimse``: waiting for each response; ``network``: any read on an idle association."""

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


def _read_meta(index: int, path: Path) -> _File:
    meta = read_file_meta_info(path)
    return _File(
        index=index,
        path=path,
        sop_class_uid=validate_uid(str(meta.get("MediaStorageSOPClassUID", "")), "MediaStorageSOPClassUID"),
        sop_instance_uid=validate_uid(
            str(meta.get("MediaStorageSOPInstanceUID", "")), "MediaStorageSOPInstanceUID"
        ),
        transfer_syntax_uid=validate_uid(str(meta.get("TransferSyntaxUID", "")), "TransferSyntaxUID"),
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
    ae = _make_ae(calling_ae, timeouts)
    for sop_class, tsyntax in contexts:
        ae.add_requested_context(sop_class, [tsyntax])

    # Stream files without decoding them (affects only sends given a path, i.e. ours).
    _config.STORE_SEND_CHUNKED_DATASET = True

    out: list[tuple[int, SendResult]] = []
    try:
        assoc = _associate(ae, destination, tls_config)
    except Exception as exc:  # e.g. a host name that does not resolve, an unreadable certificate
        message = f"could not associate: {type(exc).__name__}: {exc}"
        LOG.warning("dicom.send.associate_failed destination=%s error=%s", destination.name, message)
        return [(f.index, SendResult(f.path, None, "retry", message)) for f in files]

    if not assoc.is_established:
        message = _not_established(assoc)
        LOG.warning("dicom.send.not_associated destination=%s reason=%s", destination.name, message)
        return [(f.index, SendResult(f.path, None, "retry", message)) for f in files]

    try:
        accepted = {(str(cx.abstract_syntax), str(cx.transfer_syntax[0])) for cx in assoc.accepted_contexts}
        msg_id = 0
        for f in files:
            if not assoc.is_established:
                out.append((f.index, SendResult(f.path, None, "retry", "association ended before sending")))
                continue
            msg_id = msg_id % 65535 + 1
            if f.key in accepted:
                out.append((f.index, _send_one(assoc, f, False, msg_id, destination)))
            elif any(cx in accepted for cx in _contexts_for(f)):
                out.append((f.index, _send_one(assoc, f, True, msg_id, destination)))
            else:
                message = "peer accepted no presentation context for this SOP class / transfer syntax"
                LOG.error("dicom.send.no_context sop=%s destination=%s", f.sop_instance_uid, destination.name)
                out.append((f.index, SendResult(f.path, None, "dead", message)))
    finally:
        if assoc.is_established:
            assoc.release()
    return out


def _send_one(assoc: Association, f: _File, convert: bool, msg_id: int, destination: Destination) -> SendResult:
    """Send one file: streamed as stored, or (``convert``) decoded so pynetdicom re-encodes it in the
    accepted little-endian transfer syntax."""
    try:
        to_send: Path | Dataset = dcmread(f.path) if convert else f.path
        rsp = assoc.send_c_store(to_send, msg_id=msg_id)
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        LOG.error("dicom.send.unreadable sop=%s error=%s", f.sop_instance_uid, type(exc).__name__)
        return SendResult(f.path, None, "dead", f"cannot read the file: {type(exc).__name__}: {exc}")
    except (OSError, RuntimeError) as exc:
        LOG.warning("dicom.send.error sop=%s error=%s", f.sop_instance_uid, type(exc).__name__)
        return SendResult(f.path, None, "retry", f"send failed: {type(exc).__name__}: {exc}")
    except Exception as exc:
        LOG.error("dicom.send.error sop=%s error=%s", f.sop_instance_uid, type(exc).__name__)
        return SendResult(f.path, None, "dead", f"cannot send the file: {type(exc).__name__}: {exc}")

    status = int(rsp.Status) if "Status" in rsp else None
    comment = str(rsp.get("ErrorComment", "") or "") if status is not None else None
    verdict = classify_store_status(status, comment)
    if verdict.outcome == "success" and not verdict.warning:
        LOG.info("dicom.send.ok sop=%s destination=%s", f.sop_instance_uid, destination.name)
    elif verdict.outcome == "success":
        LOG.warning(
            "dicom.send.warning sop=%s destination=%s reason=%s",
            f.sop_instance_uid,
            destination.name,
            verdict.reason,
        )
    else:
        LOG.warning(
            "dicom.send.failed sop=%s destination=%s outcome=%s reason=%s",
            f.sop_instance_uid,
            destination.name,
            verdict.outcome,
            verdict.reason,
        )
    return SendResult(f.path, status, verdict.outcome, verdict.reason)


def echo(destination: Destination, calling_ae: str, *, timeouts: ScuTimeouts | None = None,
         tls_config: DicomTLS | None = None) -> EchoResult:
    """C-ECHO ``destination``; never raises for a peer or network problem."""
    ae = _make_ae(calling_ae, timeouts or ScuTimeouts())
    ae.add_requested_context(VERIFICATION_SOP_CLASS)
    try:
        assoc = _associate(ae, destination, tls_config)
    except Exception as exc:
        return EchoResult(False, f"could not associate: {type(exc).__name__}: {exc}")
    if not assoc.is_established:
        return EchoResult(False, _not_established(assoc))
    try:
        rsp = assoc.send_c_echo()
    finally:
        if assoc.is_established:
            assoc.release()
    if "Status" not in rsp:
        return EchoResult(False, "no C-ECHO response (timeout or abort)")
    status = int(rsp.Status)
    if status == 0x0000:
        return EchoResult(True, "success", status)
    return EchoResult(False, f"C-ECHO status 0x{status:04X}", status)
