"""The receiving side: a Storage SCP (C-STORE for every storage SOP class) and Verification SCP.

Each C-STORE is handed to :class:`dicom_gateway.ingest.Ingestor` (the same path STOW-RS uses): the
data set is kept exactly as it arrived (no decoding, no re-encoding), only its header is read, and
0x0000 is answered only after the spool has made the file durable and the sink (which records the
instance in the database) has returned.

Logs carry event names, UIDs, AE titles and addresses; never patient names, IDs or birth dates.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from io import BytesIO

from pydicom.filereader import read_dataset
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pydicom.uid import JPEGLossless as JPEGLosslessP14
from pynetdicom import AllStoragePresentationContexts

from dicom_gateway import metrics
from dicom_gateway import status as st
from dicom_gateway.acceptor import (
    AFFECTED_SOP_CLASS,
    AFFECTED_SOP_INSTANCE,
    EVENT_TYPE,
    Acceptor,
    AcceptorConfig,
    Association,
    Presentation,
    Rejection,
)
from dicom_gateway.command_set import Command
from dicom_gateway.commitment import STORAGE_COMMITMENT_PUSH, CommitmentReport, parse_report
from dicom_gateway.ingest import (
    DISPLAY_ATTRIBUTES,
    Ingestor,
    IngestRefused,
    InstanceSink,
    Origin,
    StoredInstance,
)
from dicom_gateway.spool import Spool
from dicom_gateway.tls import server_context
from dicom_gateway.upper_layer import AssociateRequest
from tamsoat.core.settings import DicomSettings

__all__ = [
    "ACCEPTED_TRANSFER_SYNTAXES",
    "DISPLAY_ATTRIBUTES",
    "STORAGE_SOP_CLASSES",
    "InstanceSink",
    "ScpTimeouts",
    "StorageSCP",
    "StoredInstance",
]

LOG = logging.getLogger(__name__)

# Transfer syntaxes accepted for every storage SOP class. When a requestor proposes several in
# one presentation context the acceptor's order decides (the first of ours that was proposed), so
# lossless and uncompressed come before lossy.
ACCEPTED_TRANSFER_SYNTAXES: tuple[str, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGLSLossless,
    JPEG2000Lossless,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    JPEGLosslessSV1,
    JPEGLosslessP14,
    RLELossless,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLSNearLossless,
    JPEG2000,
    HTJ2K,
)

STORAGE_SOP_CLASSES: frozenset[str] = frozenset(str(cx.abstract_syntax) for cx in AllStoragePresentationContexts)
VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"


@dataclass(frozen=True)
class ScpTimeouts:
    """Seconds. ``acse``: waiting for the association request (ARTIM); ``dimse``: waiting for the rest
    of a message that has begun; ``network``: an idle association is aborted after this long."""

    acse: float = 30.0
    dimse: float = 60.0
    network: float = 120.0


def _normalise_ip(value: str) -> str:
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        return value
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


def _resolve(host: str) -> set[str]:
    """The addresses ``host`` stands for: itself when an IP literal, else what DNS says now."""
    addresses = {_normalise_ip(host)}
    try:
        ipaddress.ip_address(host)
        return addresses
    except ValueError:
        pass
    try:
        for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP):
            addresses.add(_normalise_ip(str(info[4][0])))
    except OSError:
        LOG.warning("dicom.scp.allowed_peer_unresolved host=%s", host)
    return addresses


_CALLING_AE_NOT_RECOGNISED = Rejection(0x01, 0x01, 0x03, "calling_ae_not_recognised")
_CALLED_AE_NOT_RECOGNISED = Rejection(0x01, 0x01, 0x07, "called_ae_not_recognised")


class StorageSCP:
    """Storage and Verification SCP in front of a :class:`~dicom_gateway.spool.Spool`, on the
    gateway's own association acceptor (:mod:`dicom_gateway.acceptor`).

    ``settings.port == 0`` binds a free port (see :attr:`port`); the kernel's validator forbids 0,
    so tests build the settings with ``model_copy(update={"port": 0})``.

    An association is rejected (A-ASSOCIATE-RJ, rejected-permanent, DICOM UL service-user) when its
    calling AE title and address are not in ``allowed_peers`` (a non-empty list; diagnostic 3), or its
    called AE title is neither ``ae_title`` nor one of ``extra_ae_titles`` (diagnostic 7); beyond
    ``max_associations`` open ones, with rejected-transient, local limit exceeded. The called AE
    title is kept with every instance; routing rules may select on it.
    """

    def __init__(
        self,
        settings: DicomSettings,
        spool: Spool,
        sink: InstanceSink,
        timeouts: ScpTimeouts | None = None,
        commitment_sink: Callable[[CommitmentReport, str], None] | None = None,
    ) -> None:
        """``commitment_sink(report, calling_ae)`` receives Storage Commitment reports that a PACS
        sends on an association of its own (N-EVENT-REPORT); without it they are not accepted."""
        self.settings = settings
        self.commitment_sink = commitment_sink
        self.spool = spool
        self.sink = sink
        self.ingestor = Ingestor(spool, sink)  # the one ingest path, shared with STOW-RS
        self.timeouts = timeouts or ScpTimeouts()
        self._acceptor: Acceptor | None = None
        self._allowed: set[tuple[str, str]] | None = None
        self._called_titles = settings.called_ae_titles  # ae_title and extra_ae_titles, stripped
        self._lock = threading.Lock()

    # -- life cycle -------------------------------------------------------------------------------
    def start(self) -> None:
        """Start listening; returns once the socket is bound (associations are served in threads)."""
        with self._lock:
            if self._acceptor is not None:
                raise RuntimeError("StorageSCP already started")
            s = self.settings
            supported = dict.fromkeys(STORAGE_SOP_CLASSES, ACCEPTED_TRANSFER_SYNTAXES)
            supported[VERIFICATION_SOP_CLASS] = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
            roles: dict[str, tuple[bool, bool]] = {}
            if self.commitment_sink is not None:
                # The PACS opens the association to report commitment and acts as the SCP of the
                # Storage Commitment Push Model: accept that role (SCP/SCU role selection).
                supported[STORAGE_COMMITMENT_PUSH] = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
                roles[STORAGE_COMMITMENT_PUSH] = (False, True)
            if s.allowed_peers:
                self._allowed = set()
                for peer in s.allowed_peers:
                    for address in _resolve(peer.host):
                        self._allowed.add((peer.ae_title.strip(), address))
            else:
                self._allowed = None
                LOG.warning("dicom.scp.allow_list_empty any calling AE from any address is accepted")
            ssl_context = server_context(s.tls) if s.tls is not None else None
            config = AcceptorConfig(
                supported=supported, roles=roles, max_pdu=s.max_pdu, max_associations=s.max_associations,
                acse_timeout=self.timeouts.acse, dimse_timeout=self.timeouts.dimse,
                network_timeout=self.timeouts.network,
                max_dataset_bytes=s.max_dataset_bytes, ssl_context=ssl_context,
            )
            acceptor = Acceptor(s.host, s.port, config, self)
            acceptor.start()
            self._acceptor = acceptor
            LOG.info(
                "dicom.scp.started ae_title=%s extra_ae_titles=%s host=%s port=%d tls=%s", s.ae_title,
                ",".join(s.extra_ae_titles) or "-", s.host, self.port, ssl_context is not None,
            )

    def stop(self, grace_s: float = 5.0) -> None:
        """Stop accepting, give running associations ``grace_s`` to finish, then abort them."""
        with self._lock:
            acceptor, self._acceptor = self._acceptor, None
            if acceptor is None:
                return
            acceptor.stop(grace_s)
            LOG.info("dicom.scp.stopped ae_title=%s", self.settings.ae_title)

    @property
    def is_running(self) -> bool:
        return self._acceptor is not None

    @property
    def port(self) -> int:
        """The port actually listened on."""
        if self._acceptor is None:
            raise RuntimeError("StorageSCP is not running")
        return self._acceptor.port

    @property
    def active_associations(self) -> int:
        return self._acceptor.active_associations if self._acceptor is not None else 0

    def __enter__(self) -> StorageSCP:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- association events (dicom_gateway.acceptor.Services) -------------------------------------
    def _is_allowed(self, calling_ae: str, address: str) -> bool:
        if self._allowed is None:
            return True
        return (calling_ae, _normalise_ip(address)) in self._allowed

    def vet(self, request: AssociateRequest, peer_address: str) -> Rejection | None:
        if not self._is_allowed(request.calling_ae_title, peer_address):
            return _CALLING_AE_NOT_RECOGNISED
        if request.called_ae_title not in self._called_titles:
            return _CALLED_AE_NOT_RECOGNISED
        return None

    def rejected(self, request: AssociateRequest, peer_address: str, rejection: Rejection) -> None:
        calling = request.calling_ae_title
        # An unlisted title is not used as a label: peers must not choose our metrics' cardinality.
        known = {p.ae_title.strip() for p in self.settings.allowed_peers}
        metrics.ASSOCIATIONS.labels(calling if calling in known else "(unlisted)", "rejected").inc()
        LOG.warning("dicom.assoc.rejected reason=%s calling_ae=%s called_ae=%s peer=%s",
                    rejection.label, calling, request.called_ae_title, peer_address)

    def accepted(self, assoc: Association) -> None:
        metrics.ASSOCIATIONS.labels(assoc.calling_ae_title or "-", "accepted").inc()
        LOG.info("dicom.assoc.accepted calling_ae=%s called_ae=%s peer=%s contexts=%d", assoc.calling_ae_title,
                 assoc.called_ae_title, assoc.peer_address, len(assoc.contexts))

    def aborted(self, assoc: Association) -> None:
        LOG.warning("dicom.assoc.aborted calling_ae=%s peer=%s", assoc.calling_ae_title, assoc.peer_address)

    def c_echo(self, assoc: Association) -> int:
        LOG.info("dicom.echo calling_ae=%s peer=%s", assoc.calling_ae_title, assoc.peer_address)
        return st.SUCCESS

    # -- Storage Commitment reports ---------------------------------------------------------------
    def n_event_report(self, assoc: Association, context: Presentation, cmd: Command, data: bytes | None) -> int:
        calling = assoc.calling_ae_title
        if self.commitment_sink is None or context.abstract_syntax != STORAGE_COMMITMENT_PUSH:
            return 0x0118  # no such SOP class
        try:
            ts = UID(context.transfer_syntax)
            information = read_dataset(BytesIO(data or b""), ts.is_implicit_VR, ts.is_little_endian)
            report = parse_report(cmd.us(EVENT_TYPE) or 0, information)
            self.commitment_sink(report, calling)
        except Exception as exc:
            LOG.error("dicom.commitment.report_failed calling_ae=%s error=%s", calling, type(exc).__name__)
            return 0x0110  # processing failure: the PACS will report again
        LOG.info("dicom.commitment.report calling_ae=%s transaction=%s committed=%d failed=%d", calling,
                 report.transaction_uid, len(report.committed), len(report.failed))
        return 0x0000

    # -- C-STORE ----------------------------------------------------------------------------------
    def c_store(self, assoc: Association, context: Presentation, cmd: Command,
                data: Sequence[memoryview] | None, size: int) -> tuple[int, str | None]:
        origin = Origin(calling_ae_title=assoc.calling_ae_title, called_ae_title=assoc.called_ae_title,
                        peer_address=assoc.peer_address)
        requested_class = cmd.uid(AFFECTED_SOP_CLASS)
        if data is None and size:
            limit = self.settings.max_dataset_bytes
            refusal = IngestRefused(st.OUT_OF_RESOURCES, f"data set larger than {limit} bytes")
            self.ingestor.refused(origin, cmd.uid(AFFECTED_SOP_INSTANCE), refusal)
            return refusal.status, refusal.comment
        try:
            if requested_class != context.abstract_syntax:
                raise IngestRefused(st.DATASET_MISMATCH, "SOP Class UID does not match the presentation context")
            if data is None:
                raise IngestRefused(st.CANNOT_UNDERSTAND, "C-STORE request without a data set")
            self.ingestor.ingest(
                data, context.transfer_syntax, origin,
                expected_sop_class=requested_class, expected_sop_instance=cmd.uid(AFFECTED_SOP_INSTANCE),
            )
        except IngestRefused as exc:
            return exc.status, exc.comment
        return st.SUCCESS, None
