"""The gateway's DICOM association acceptor: the Upper Layer state machine of PS3.8 for the
acceptor side, and the DIMSE messages an SCP receives (C-ECHO, C-STORE, N-EVENT-REPORT).

Why not pynetdicom's server: it spends ~2.5 ms of CPU per received instance outside our code (a DUL
thread and an association thread handing each PDU over, fragments copied several times, command
sets decoded through pydicom, events built per message), more than the whole per-instance time of
DCMTK's storescp. Here one thread per association reads each PDU straight into one buffer, keeps the
data set's fragments as views of those buffers and joins them once, and answers in the same thread.
What the association may do is decided by a :class:`Services` object (our StorageSCP): whether to
accept it, and what to answer to each message. Our requestor (:mod:`dicom_gateway.requestor`) shares
the PDU code; pynetdicom still runs our query/retrieve and storage commitment requests.

Timers: ``acse`` bounds the wait for the A-ASSOCIATE-RQ (and the TLS handshake) after a connection
opens, i.e. the ARTIM timer; ``dimse`` the wait for the rest of a message once it has begun (the
next fragment of its command or data set); ``network`` aborts an association that sends nothing
for that long between messages.

Logs carry event names, AE titles, addresses and reasons; never patient data.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import socket
import ssl
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from dicom_gateway import upper_layer as ul
from dicom_gateway.command_set import Command, command, parse_command
from dicom_gateway.pdu_stream import PduStream
from dicom_gateway.uids import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

__all__ = [
    "Acceptor",
    "AcceptorConfig",
    "Association",
    "Presentation",
    "Rejection",
    "Services",
]

LOG = logging.getLogger(__name__)

_ASSOCIATE_RQ_LIMIT = 1 << 20  # an A-ASSOCIATE-RQ proposing every storage class fits in ~40 KB
_NO_DATA_SET = 0x0101
_C_STORE_RQ, _C_ECHO_RQ, _N_EVENT_REPORT_RQ, _C_CANCEL_RQ = 0x0001, 0x0030, 0x0100, 0x0FFF
_UNRECOGNIZED_OPERATION = 0x0211
_COMMENT_MAX = 64  # Error Comment is LO

# Command set tags (group 0000).
AFFECTED_SOP_CLASS, COMMAND_FIELD, MESSAGE_ID, RESPONDED_TO = 0x0002, 0x0100, 0x0110, 0x0120
DATA_SET_TYPE, STATUS, ERROR_COMMENT, AFFECTED_SOP_INSTANCE, EVENT_TYPE = 0x0800, 0x0900, 0x0902, 0x1000, 0x1002


@dataclass(frozen=True)
class Rejection:
    """An A-ASSOCIATE-RJ (PS3.8 9.3.4): ``result`` 1 permanent, 2 transient; ``source`` 1 service
    user, 2 service provider (ACSE), 3 service provider (presentation); ``reason`` its diagnostic.
    ``label`` names it in logs."""

    result: int
    source: int
    reason: int
    label: str


LIMIT_EXCEEDED = Rejection(0x02, 0x03, 0x02, "local_limit_exceeded")
_PROTOCOL_VERSION = Rejection(0x01, 0x02, 0x02, "protocol_version_not_supported")
_APPLICATION_CONTEXT = Rejection(0x01, 0x01, 0x02, "application_context_not_supported")


@dataclass(frozen=True)
class Presentation:
    """An accepted presentation context."""

    id: int
    abstract_syntax: str
    transfer_syntax: str


@dataclass
class Association:
    """One accepted association, as the services see it."""

    calling_ae_title: str
    called_ae_title: str
    peer_address: str
    contexts: dict[int, Presentation] = field(default_factory=dict)
    peer_max_pdu: int = 0


class Services(Protocol):
    """What the acceptor asks of the SCP behind it."""

    def vet(self, request: ul.AssociateRequest, peer_address: str) -> Rejection | None:
        """Return a rejection, or None to accept the association."""

    def rejected(self, request: ul.AssociateRequest, peer_address: str, rejection: Rejection) -> None:
        """Every A-ASSOCIATE-RJ about to be sent: the service's own (from :meth:`vet`) and the
        acceptor's (protocol version, application context, association limit)."""

    def accepted(self, assoc: Association) -> None: ...

    def aborted(self, assoc: Association) -> None: ...

    def c_echo(self, assoc: Association) -> int: ...

    def c_store(self, assoc: Association, context: Presentation, cmd: Command,
                data: Sequence[memoryview] | None, size: int) -> tuple[int, str | None]:
        """Store one instance; returns (status, error comment). ``data`` is the data set as the
        fragments it arrived in (views of the PDU buffers, not to be kept after the call); None when
        the request had no data set (``size`` 0) or when its ``size`` bytes were over
        ``max_dataset_bytes`` and were dropped as they arrived."""

    def n_event_report(self, assoc: Association, context: Presentation, cmd: Command,
                       data: bytes | None) -> int: ...


@dataclass(frozen=True)
class AcceptorConfig:
    """``supported``: abstract syntax -> accepted transfer syntaxes, preferred first (when several
    are proposed in one context, the first of ours wins). ``roles``: abstract syntax -> the (SCU,
    SCP) roles a requestor may take in an SCP/SCU role selection; default (True, False)."""

    supported: Mapping[str, tuple[str, ...]]
    roles: Mapping[str, tuple[bool, bool]]
    max_pdu: int
    max_associations: int
    acse_timeout: float
    dimse_timeout: float
    network_timeout: float
    max_dataset_bytes: int
    ssl_context: ssl.SSLContext | None = None


class Acceptor:
    """Listens on ``(host, port)`` (port 0: a free one) and serves each association in a thread."""

    def __init__(self, host: str, port: int, config: AcceptorConfig, services: Services) -> None:
        self.host = host
        self.requested_port = port
        self.config = config
        self.services = services
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._active: dict[int, PduStream] = {}
        self._threads: dict[int, threading.Thread] = {}
        self._ids = itertools.count(1)
        self._stopping = False

    # -- life cycle -------------------------------------------------------------------------------
    def start(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # "::" listens on IPv4 too where the system can (IPv4 peers then show as ::ffff:a.b.c.d).
        dualstack = self.host == "::" and socket.has_dualstack_ipv6()
        listener = socket.create_server((self.host, self.requested_port), family=family, backlog=64,
                                        dualstack_ipv6=dualstack)
        self._listener = listener
        self._thread = threading.Thread(target=self._accept_loop, name="tamsoat-dicom-acceptor", daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        if self._listener is None:
            raise RuntimeError("the acceptor is not listening")
        return int(self._listener.getsockname()[1])

    @property
    def connection_limit(self) -> int:
        """Connections served at once, associations being set up or rejected included."""
        return 2 * self.config.max_associations + 16

    @property
    def active_associations(self) -> int:
        with self._lock:
            return len(self._active)

    def stop(self, grace_s: float) -> None:
        """Stop listening, give open associations ``grace_s`` to end, then abort them."""
        listener, self._listener = self._listener, None
        if listener is None:
            return
        self._stopping = True
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)  # wakes accept()
        listener.close()
        if self._thread is not None:
            self._thread.join(5)
        deadline = time.monotonic() + grace_s
        while self.active_associations and time.monotonic() < deadline:
            time.sleep(0.01)
        with self._lock:
            remaining = list(self._active.values())
            threads = list(self._threads.values())
        for conn in remaining:
            with contextlib.suppress(OSError):
                conn.send(ul.abort_pdu(source=0x00))
            conn.close()
        for thread in threads:
            thread.join(5)

    def _accept_loop(self) -> None:
        listener = self._listener
        assert listener is not None
        while not self._stopping:
            try:
                sock, address = listener.accept()
            except OSError:
                if self._stopping:
                    return
                time.sleep(0.05)  # e.g. EMFILE: let associations finish rather than spin
                continue
            number = next(self._ids)
            thread = threading.Thread(target=self._serve, args=(number, sock, str(address[0])),
                                      name=f"tamsoat-assoc-{number}", daemon=True)
            with self._lock:
                overloaded = len(self._threads) >= self.connection_limit
                if not overloaded:
                    self._threads[number] = thread
            if overloaded:
                # Beyond max_associations a connection still gets its A-ASSOCIATE-RJ (in a thread of
                # its own); beyond this many, it is closed at once: a flood of idle connections
                # must not cost a thread each for the ARTIM time.
                LOG.warning("dicom.assoc.refused_overload peer=%s open_connections=%d", address[0],
                            self.connection_limit)
                with contextlib.suppress(OSError):
                    sock.close()
                continue
            thread.start()

    # -- one association --------------------------------------------------------------------------
    def _serve(self, number: int, sock: socket.socket, address: str) -> None:
        if address.startswith("::ffff:"):
            address = address[7:]
        conn = PduStream(sock, address)
        counted = False
        assoc: Association | None = None
        try:
            sock.settimeout(self.config.acse_timeout)
            if self.config.ssl_context is not None:
                try:
                    conn.sock = self.config.ssl_context.wrap_socket(sock, server_side=True)
                except (OSError, ssl.SSLError) as exc:
                    LOG.warning("dicom.tls.handshake_failed peer=%s error=%s", address, type(exc).__name__)
                    return
            with self._lock:
                counted = len(self._active) < self.config.max_associations
                if counted:
                    self._active[number] = conn
            assoc = self._establish(conn, counted)
            if assoc is None:
                return
            self._data_phase(conn, assoc)
        except ul.PduError as exc:
            LOG.warning("dicom.assoc.protocol_error peer=%s reason=%d detail=%s", address, exc.reason, exc)
            with contextlib.suppress(OSError):
                conn.send(ul.abort_pdu(0x02, exc.reason))
        except TimeoutError:
            LOG.warning("dicom.assoc.timeout peer=%s established=%s", address, assoc is not None)
            with contextlib.suppress(OSError):
                conn.send(ul.abort_pdu(0x02, 0x00))
        except (ConnectionError, OSError) as exc:
            if not self._stopping:
                LOG.warning("dicom.assoc.connection_lost peer=%s error=%s", address, type(exc).__name__)
            if assoc is not None:
                self.services.aborted(assoc)
        except Exception as exc:  # a bug of ours: abort this association, keep serving the others
            LOG.error("dicom.assoc.failed peer=%s error=%s", address, type(exc).__name__, exc_info=True)
            with contextlib.suppress(OSError):
                conn.send(ul.abort_pdu(0x02, 0x00))
        finally:
            conn.close(0.0 if self._stopping else min(self.config.acse_timeout, 5.0))
            with self._lock:
                self._active.pop(number, None)
                self._threads.pop(number, None)

    def _establish(self, conn: PduStream, slot: bool) -> Association | None:
        kind, body = conn.read_pdu(_ASSOCIATE_RQ_LIMIT)
        if kind != ul.A_ASSOCIATE_RQ:
            raise ul.PduError(ul.REASON_UNEXPECTED_PDU, f"PDU 0x{kind:02X} before A-ASSOCIATE-RQ")
        rq = ul.parse_associate_rq(bytes(body))
        rejection: Rejection | None = None
        if not rq.protocol_version & 0x0001:
            rejection = _PROTOCOL_VERSION
        elif rq.application_context != ul.APPLICATION_CONTEXT:
            rejection = _APPLICATION_CONTEXT
        elif not slot:
            rejection = LIMIT_EXCEEDED
        else:
            rejection = self.services.vet(rq, conn.address)
        if rejection is not None:
            self.services.rejected(rq, conn.address, rejection)
            conn.send(ul.associate_rj(rejection.result, rejection.source, rejection.reason))
            return None
        answers, roles = self._negotiate(rq)
        conn.send(ul.associate_ac(
            rq, answers, max_pdu=self.config.max_pdu, implementation_class_uid=IMPLEMENTATION_CLASS_UID,
            implementation_version_name=IMPLEMENTATION_VERSION_NAME, roles=roles,
        ))
        assoc = Association(
            calling_ae_title=rq.calling_ae_title, called_ae_title=rq.called_ae_title, peer_address=conn.address,
            contexts={a.id: Presentation(a.id, a.abstract_syntax, a.transfer_syntax) for a in answers if a.result == 0},
            peer_max_pdu=rq.max_pdu,
        )
        self.services.accepted(assoc)
        return assoc

    def _negotiate(self, rq: ul.AssociateRequest) -> tuple[list[ul.AcceptedContext], dict[str, tuple[bool, bool]]]:
        answers = []
        for proposed in rq.contexts:
            ours = self.config.supported.get(proposed.abstract_syntax)
            if ours is None:
                answers.append(ul.AcceptedContext(proposed.id, proposed.abstract_syntax, 0x03))
                continue
            chosen = next((ts for ts in ours if ts in proposed.transfer_syntaxes), None)
            if chosen is None:
                answers.append(ul.AcceptedContext(proposed.id, proposed.abstract_syntax, 0x04))
            else:
                answers.append(ul.AcceptedContext(proposed.id, proposed.abstract_syntax, 0x00, chosen))
        accepted = {a.abstract_syntax for a in answers if a.result == 0}
        roles = {}
        for uid, (scu, scp) in rq.roles.items():
            if uid in accepted:
                may_scu, may_scp = self.config.roles.get(uid, (True, False))
                roles[uid] = (scu and may_scu, scp and may_scp)
        return answers, roles

    def _data_phase(self, conn: PduStream, assoc: Association) -> None:
        limit = self.config.max_pdu
        command_parts: list[memoryview] = []
        data_parts: list[memoryview] = []
        data_size = 0
        pending: tuple[Presentation, Command] | None = None  # a command whose data set is arriving
        while True:
            in_message = bool(command_parts) or pending is not None
            conn.settimeout(self.config.dimse_timeout if in_message else self.config.network_timeout)
            kind, body = conn.read_pdu(limit)
            if kind == ul.P_DATA_TF:
                items = list(ul.pdvs(memoryview(body)))
                for context_id, control, value in items:
                    context = assoc.contexts.get(context_id)
                    if context is None:
                        raise ul.PduError(ul.REASON_INVALID_PARAMETER, f"PDV on context {context_id}, not accepted")
                    if control & 0x01:
                        if pending is not None:
                            raise ul.PduError(ul.REASON_UNEXPECTED_PARAMETER, "a command before the data set ended")
                        command_parts.append(value)
                        if control & 0x02:
                            cmd = self._command(command_parts)
                            command_parts = []
                            if cmd.us(DATA_SET_TYPE) == _NO_DATA_SET:
                                self._dispatch(conn, assoc, context, cmd, None)
                            else:
                                pending, data_size = (context, cmd), 0
                    else:
                        if pending is None or pending[0].id != context_id:
                            raise ul.PduError(ul.REASON_UNEXPECTED_PARAMETER, "a data set fragment without its command")
                        data_size += len(value)
                        if data_size <= self.config.max_dataset_bytes:
                            data_parts.append(value)
                        else:
                            data_parts = []  # too big: read it to its end, keep none of it
                        if control & 0x02:
                            kept = data_size <= self.config.max_dataset_bytes
                            data, data_parts = (data_parts if kept else None), []
                            self._dispatch(conn, assoc, pending[0], pending[1], data, data_size)
                            pending = None
            elif kind == ul.A_RELEASE_RQ:
                conn.send(ul.RELEASE_RP)
                LOG.debug("dicom.assoc.released peer=%s", conn.address)
                return
            elif kind == ul.A_ABORT:
                self.services.aborted(assoc)
                return
            elif kind in (ul.A_ASSOCIATE_RQ, ul.A_ASSOCIATE_AC, ul.A_ASSOCIATE_RJ, ul.A_RELEASE_RP):
                raise ul.PduError(ul.REASON_UNEXPECTED_PDU, f"PDU 0x{kind:02X} during data transfer")
            else:
                raise ul.PduError(ul.REASON_UNRECOGNIZED_PDU, f"unknown PDU type 0x{kind:02X}")

    @staticmethod
    def _command(parts: list[memoryview]) -> Command:
        try:
            cmd = parse_command(b"".join(parts))
        except ValueError as exc:
            raise ul.PduError(ul.REASON_INVALID_PARAMETER, f"command set: {exc}") from exc
        if cmd.us(COMMAND_FIELD) is None or cmd.us(MESSAGE_ID) is None:
            raise ul.PduError(ul.REASON_INVALID_PARAMETER, "command set without Command Field or Message ID")
        return cmd

    def _dispatch(self, conn: PduStream, assoc: Association, context: Presentation, cmd: Command,
                  data: list[memoryview] | None, size: int = 0) -> None:
        field_ = cmd.us(COMMAND_FIELD)
        message_id = cmd.us(MESSAGE_ID)
        sop_class = cmd.uid(AFFECTED_SOP_CLASS) or None
        sop_instance = cmd.uid(AFFECTED_SOP_INSTANCE) or None
        comment: str | None
        if field_ == _C_STORE_RQ:
            status, comment = self.services.c_store(assoc, context, cmd, data, size)
            response = command(
                (AFFECTED_SOP_CLASS, "UI", sop_class), (COMMAND_FIELD, "US", 0x8001), (RESPONDED_TO, "US", message_id),
                (DATA_SET_TYPE, "US", _NO_DATA_SET), (STATUS, "US", status), (ERROR_COMMENT, "LO", _comment(comment)),
                (AFFECTED_SOP_INSTANCE, "UI", sop_instance),
            )
        elif field_ == _C_ECHO_RQ:
            response = command(
                (AFFECTED_SOP_CLASS, "UI", sop_class), (COMMAND_FIELD, "US", 0x8030), (RESPONDED_TO, "US", message_id),
                (DATA_SET_TYPE, "US", _NO_DATA_SET), (STATUS, "US", self.services.c_echo(assoc)),
            )
        elif field_ == _N_EVENT_REPORT_RQ:
            status = self.services.n_event_report(assoc, context, cmd, None if data is None else b"".join(data))
            response = command(
                (AFFECTED_SOP_CLASS, "UI", sop_class), (COMMAND_FIELD, "US", 0x8100), (RESPONDED_TO, "US", message_id),
                (DATA_SET_TYPE, "US", _NO_DATA_SET), (STATUS, "US", status),
                (AFFECTED_SOP_INSTANCE, "UI", sop_instance), (EVENT_TYPE, "US", cmd.us(EVENT_TYPE)),
            )
        elif field_ == _C_CANCEL_RQ:
            return  # nothing of ours runs long enough to be cancelled
        else:
            LOG.warning("dicom.dimse.unsupported command=0x%04X peer=%s", field_ or 0, conn.address)
            response = command(
                (AFFECTED_SOP_CLASS, "UI", sop_class), (COMMAND_FIELD, "US", (field_ or 0) | 0x8000),
                (RESPONDED_TO, "US", message_id), (DATA_SET_TYPE, "US", _NO_DATA_SET),
                (STATUS, "US", _UNRECOGNIZED_OPERATION),
            )
        conn.send_parts(ul.p_data_pdus(context.id, True, response, assoc.peer_max_pdu))


def _comment(text: str | None) -> str | None:
    if not text:
        return None
    clean = text.encode("ascii", errors="replace").decode("ascii").replace("\\", "/")
    return clean[:_COMMENT_MAX]
