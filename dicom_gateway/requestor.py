"""The gateway's association requestor for C-STORE and C-ECHO (PS3.8 requestor side, PS3.7 DIMSE).

Why not pynetdicom's: sending a 525 KB instance through pynetdicom cost ~2 ms of CPU (its DUL and
association threads, events, fragments copied, command sets through pydicom), a third of DCMTK
storescu's speed. Here the caller's thread writes the command and the data set bytes as P-DATA-TF
PDUs straight from the file's bytes and reads the response itself. pynetdicom still runs our
query/retrieve (C-FIND, C-MOVE) and storage commitment (N-ACTION) associations.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
from dataclasses import dataclass
from typing import NoReturn

from dicom_gateway import upper_layer as ul
from dicom_gateway.command_set import Command, command, parse_command
from dicom_gateway.pdu_stream import PduStream
from dicom_gateway.uids import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

__all__ = ["AssociationError", "Rejected", "Requestor", "RequestorTimeouts"]

LOG = logging.getLogger(__name__)

MAX_PDU = 262144  # what we accept from the peer
_NO_DATA_SET, _DATA_SET = 0x0101, 0x0000

_RESULTS = {1: "Rejected Permanent", 2: "Rejected Transient"}
_SOURCES = {1: "Service User", 2: "Service Provider (ACSE)", 3: "Service Provider (Presentation)"}
_REASONS = {
    (1, 1): "No reason given", (1, 2): "Application context name not supported",
    (1, 3): "Calling AE title not recognised", (1, 7): "Called AE title not recognised",
    (2, 1): "No reason given", (2, 2): "Protocol version not supported",
    (3, 1): "Temporary congestion", (3, 2): "Local limit exceeded",
}


class AssociationError(Exception):
    """No association, or it ended (aborted, closed, timed out); the message says why."""


class Rejected(AssociationError):
    """The peer answered A-ASSOCIATE-RJ."""

    def __init__(self, result: int, source: int, reason: int) -> None:
        self.result, self.source, self.reason = result, source, reason
        super().__init__(
            f"association rejected: {_RESULTS.get(result, f'result {result}')}, "
            f"{_SOURCES.get(source, f'source {source}')}, {_REASONS.get((source, reason), f'reason {reason}')}"
        )


@dataclass(frozen=True)
class RequestorTimeouts:
    """Seconds: TCP connect, association set-up and release, each response."""

    connect: float
    acse: float
    dimse: float


class Requestor:
    """One association we asked for. Not thread-safe: one caller sends at a time."""

    def __init__(self, stream: PduStream, accepted: dict[tuple[str, str], int], peer_max_pdu: int,
                 timeouts: RequestorTimeouts) -> None:
        self._stream = stream
        self.accepted = accepted  # (abstract syntax, transfer syntax) -> presentation context ID
        self._peer_max_pdu = peer_max_pdu
        self._timeouts = timeouts
        self._message_id = 0
        self.is_open = True

    @classmethod
    def open(cls, host: str, port: int, *, calling_ae_title: str, called_ae_title: str,
             contexts: list[tuple[str, str]], timeouts: RequestorTimeouts,
             ssl_context: ssl.SSLContext | None = None) -> Requestor:
        """Associate, proposing each (abstract syntax, transfer syntax) of ``contexts`` as a context of
        its own (at most 128). Raises :class:`Rejected` or :class:`AssociationError`."""
        if not 0 < len(contexts) <= 128:
            raise ValueError("an association proposes 1 to 128 presentation contexts")
        try:
            sock = socket.create_connection((host, port), timeout=timeouts.connect)
        except OSError as exc:
            raise AssociationError(f"could not associate: connection failed ({type(exc).__name__}: {exc})") from exc
        stream = PduStream(sock, host)
        try:
            sock.settimeout(timeouts.acse)
            if ssl_context is not None:
                stream.sock = ssl_context.wrap_socket(sock, server_hostname=host)
            proposed = [ul.ProposedContext(2 * i + 1, abstract, (ts,)) for i, (abstract, ts) in enumerate(contexts)]
            stream.send(ul.associate_rq(
                called_ae_title=called_ae_title, calling_ae_title=calling_ae_title, contexts=proposed,
                max_pdu=MAX_PDU, implementation_class_uid=IMPLEMENTATION_CLASS_UID,
                implementation_version_name=IMPLEMENTATION_VERSION_NAME,
            ))
            kind, body = stream.read_pdu(1 << 20)
            if kind == ul.A_ASSOCIATE_RJ and len(body) >= 4:
                raise Rejected(body[1], body[2], body[3])
            if kind == ul.A_ABORT:
                raise AssociationError("could not associate: the peer aborted the association")
            if kind != ul.A_ASSOCIATE_AC:
                raise AssociationError(f"could not associate: unexpected PDU 0x{kind:02X}")
            ac = ul.parse_associate_ac(bytes(body))
        except AssociationError:
            stream.close()
            raise
        except (OSError, ul.PduError) as exc:
            stream.close()
            raise AssociationError(f"could not associate: {type(exc).__name__}: {exc}") from exc
        by_id = {cx.id: cx for cx in proposed}
        accepted = {
            (by_id[cid].abstract_syntax, syntax): cid
            for cid, (result, syntax) in ac.contexts.items()
            if result == 0 and cid in by_id and syntax in by_id[cid].transfer_syntaxes
        }
        stream.settimeout(timeouts.dimse)
        return cls(stream, accepted, ac.max_pdu, timeouts)

    # -- DIMSE ------------------------------------------------------------------------------------
    def _next_id(self) -> int:
        self._message_id = self._message_id % 65535 + 1
        return self._message_id

    def c_store(self, context_id: int, sop_class_uid: str, sop_instance_uid: str, data: bytes | memoryview) -> Command:
        """Send one data set (already in the context's transfer syntax); returns the response."""
        message_id = self._next_id()
        rq = command(
            (0x0002, "UI", sop_class_uid), (0x0100, "US", 0x0001), (0x0110, "US", message_id),
            (0x0700, "US", 0x0000), (0x0800, "US", _DATA_SET), (0x1000, "UI", sop_instance_uid),
        )
        self._send(context_id, rq, data)
        return self._response(message_id)

    def c_echo(self, context_id: int) -> Command:
        message_id = self._next_id()
        rq = command((0x0002, "UI", "1.2.840.10008.1.1"), (0x0100, "US", 0x0030), (0x0110, "US", message_id),
                     (0x0800, "US", _NO_DATA_SET))
        self._send(context_id, rq, None)
        return self._response(message_id)

    def _send(self, context_id: int, rq: bytes, data: bytes | memoryview | None) -> None:
        if not self.is_open:
            raise AssociationError("the association has ended")
        try:
            parts = ul.p_data_pdus(context_id, True, rq, self._peer_max_pdu)
            if data is not None:
                parts += ul.p_data_pdus(context_id, False, data, self._peer_max_pdu)
            self._stream.send_parts(parts)  # the command and its data set in one go
        except OSError as exc:
            self._lost(exc)

    def _response(self, message_id: int) -> Command:
        parts: list[memoryview] = []
        try:
            while True:
                kind, body = self._stream.read_pdu(MAX_PDU)
                if kind == ul.A_ABORT:
                    self.is_open = False
                    self._stream.close()
                    raise AssociationError("the peer aborted the association")
                if kind != ul.P_DATA_TF:
                    raise ul.PduError(ul.REASON_UNEXPECTED_PDU, f"PDU 0x{kind:02X} while waiting for a response")
                for _, control, value in ul.pdvs(memoryview(body)):
                    if not control & 0x01:
                        continue  # a response data set: C-STORE and C-ECHO responses have none
                    parts.append(value)
                    if control & 0x02:
                        rsp = parse_command(b"".join(parts))
                        parts = []
                        if rsp.us(0x0120) == message_id:
                            return rsp
        except (OSError, ValueError) as exc:  # ValueError: a malformed command set
            self._lost(exc)
        except ul.PduError as exc:
            self.abort(exc.reason)
            raise AssociationError(f"protocol error from the peer: {exc}") from exc

    def _lost(self, exc: BaseException) -> NoReturn:
        timed_out = isinstance(exc, TimeoutError)
        if timed_out:
            self.abort()  # tell the peer we gave up (A-ABORT, service user), then close
        else:
            self.is_open = False
            self._stream.close()
        what = "no response in time" if timed_out else f"{type(exc).__name__}: {exc}"
        raise AssociationError(f"association lost: {what}") from exc

    # -- ending -----------------------------------------------------------------------------------
    def release(self) -> None:
        """A-RELEASE: ask, wait for the answer (ACSE timeout), close. Never raises."""
        if not self.is_open:
            return
        self.is_open = False
        try:
            self._stream.settimeout(self._timeouts.acse)
            self._stream.send(ul.RELEASE_RQ)
            while True:
                kind, _ = self._stream.read_pdu(MAX_PDU)
                if kind in (ul.A_RELEASE_RP, ul.A_ABORT):
                    break
        except (OSError, ul.PduError) as exc:
            LOG.debug("dicom.release.incomplete peer=%s error=%s", self._stream.address, type(exc).__name__)
        finally:
            self._stream.close()

    def abort(self, reason: int = 0) -> None:
        if self.is_open:
            self.is_open = False
            with contextlib.suppress(OSError):
                self._stream.send(ul.abort_pdu(0x02 if reason else 0x00, reason))
        self._stream.close()

    def __enter__(self) -> Requestor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
