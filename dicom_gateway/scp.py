"""The receiving side: a Storage SCP (C-STORE for every storage SOP class) and Verification SCP.

Each C-STORE is handed to :class:`dicom_gateway.ingest.Ingestor` (the same path STOW-RS uses): the
data set is kept exactly as it arrived (no decoding, no re-encoding), only its header is read, and
0x0000 is answered only after the spool has made the file durable and the sink (which records the
instance in the database) has returned.

Logs carry event names, UIDs, AE titles and addresses; never patient names, IDs or birth dates.
"""

from __future__ import annotations

import copy
import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from pydicom.dataset import Dataset
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
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
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.presentation import PresentationContext

from dicom_gateway import metrics
from dicom_gateway import status as st
from dicom_gateway.commitment import STORAGE_COMMITMENT_PUSH, CommitmentReport, parse_report
from dicom_gateway.ingest import (
    DISPLAY_ATTRIBUTES,
    Ingestor,
    IngestRefused,
    InstanceSink,
    Origin,
    StoredInstance,
    read_header,
)
from dicom_gateway.net import tune_connection
from dicom_gateway.pynetdicom_tuning import install as tune_pynetdicom
from dicom_gateway.spool import Spool
from dicom_gateway.tls import server_context
from tamsoat.core.settings import DicomSettings

if TYPE_CHECKING:
    from pynetdicom.association import Association
    from pynetdicom.dimse_primitives import C_STORE
    from pynetdicom.transport import ThreadedAssociationServer

__all__ = [
    "ACCEPTED_TRANSFER_SYNTAXES",
    "DISPLAY_ATTRIBUTES",
    "STORAGE_SOP_CLASSES",
    "InstanceSink",
    "ScpTimeouts",
    "StorageSCP",
    "StoredInstance",
    "read_header",
]

LOG = logging.getLogger(__name__)

# Transfer syntaxes accepted for every storage SOP class. When a requestor proposes several in
# one presentation context the acceptor's order decides (pynetdicom picks the first of ours that
# was proposed), so lossless and uncompressed come before lossy.
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
_ERROR_COMMENT_MAX = 64  # LO
VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"


@dataclass(frozen=True)
class ScpTimeouts:
    """Seconds. ``acse``: waiting for association messages; ``dimse``: waiting for DIMSE messages;
    ``network``: an idle association is aborted after this long."""

    acse: float = 30.0
    dimse: float = 60.0
    network: float = 120.0


class _SharedUIDContext(PresentationContext):
    """A supported presentation context whose deep copy shares its UIDs (immutable strings).

    pynetdicom deep-copies every supported context for every association it accepts; with ~130
    storage SOP classes x 16 transfer syntaxes that re-validated ~2,000 UIDs and took ~20 ms of CPU
    per association (most of the cost of an association that carries one instance)."""

    @classmethod
    def of(cls, cx: PresentationContext) -> _SharedUIDContext:
        shared = cls.__new__(cls)
        shared.__dict__.update(cx.__dict__)
        shared._transfer_syntax = list(cx._transfer_syntax)
        return shared

    def __deepcopy__(self, memo: dict[int, Any]) -> _SharedUIDContext:
        clone = copy.copy(self)
        clone._transfer_syntax = list(self._transfer_syntax)
        return clone


def _status(code: int, comment: str | None = None) -> Dataset:
    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = comment[:_ERROR_COMMENT_MAX]
    return ds


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


@dataclass(frozen=True)
class _Rejection:
    """Why an association is rejected: the A-ASSOCIATE-RJ diagnostic (PS3.8 9.3.4) and the log's reason."""

    diagnostic: int
    reason: str


_CALLING_AE_NOT_RECOGNISED = _Rejection(0x03, "calling_ae_not_recognised")
_CALLED_AE_NOT_RECOGNISED = _Rejection(0x07, "called_ae_not_recognised")


class StorageSCP:
    """Storage and Verification SCP in front of a :class:`~dicom_gateway.spool.Spool`.

    ``settings.port == 0`` binds a free port (see :attr:`port`); the kernel's validator forbids 0,
    so tests build the settings with ``model_copy(update={"port": 0})``.

    An association is rejected (A-ASSOCIATE-RJ, rejected-permanent, DICOM UL service-user) when its
    calling AE title and address are not in ``allowed_peers`` (a non-empty list; diagnostic 3), or its
    called AE title is neither ``ae_title`` nor one of ``extra_ae_titles`` (diagnostic 7). The called AE
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
        self._server: ThreadedAssociationServer | None = None
        self._ae: AE | None = None
        self._allowed: set[tuple[str, str]] | None = None
        self._called_titles = settings.called_ae_titles  # ae_title and extra_ae_titles, stripped
        self._lock = threading.Lock()

    # -- life cycle -------------------------------------------------------------------------------
    def start(self) -> None:
        """Start listening; returns once the socket is bound (the server runs in threads)."""
        with self._lock:
            if self._server is not None:
                raise RuntimeError("StorageSCP already started")
            s = self.settings
            tune_pynetdicom()  # dicom_gateway.pynetdicom_tuning
            ae = AE(ae_title=s.ae_title)
            ae.maximum_pdu_size = s.max_pdu
            ae.maximum_associations = s.max_associations
            ae.acse_timeout = self.timeouts.acse
            ae.dimse_timeout = self.timeouts.dimse
            ae.network_timeout = self.timeouts.network
            for cx in AllStoragePresentationContexts:
                ae.add_supported_context(str(cx.abstract_syntax), list(ACCEPTED_TRANSFER_SYNTAXES))
            ae.add_supported_context(VERIFICATION_SOP_CLASS, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
            if self.commitment_sink is not None:
                # The PACS opens the association to report commitment and acts as the SCP of the
                # Storage Commitment Push Model: accept that role (SCP/SCU role selection).
                ae.add_supported_context(STORAGE_COMMITMENT_PUSH, [ExplicitVRLittleEndian, ImplicitVRLittleEndian],
                                         scu_role=False, scp_role=True)

            if s.allowed_peers:
                self._allowed = set()
                for peer in s.allowed_peers:
                    for address in _resolve(peer.host):
                        self._allowed.add((peer.ae_title.strip(), address))
                # Backstop: even if our own check were skipped, pynetdicom still checks the title.
                ae.require_calling_aet = sorted({p.ae_title.strip() for p in s.allowed_peers})
            else:
                self._allowed = None
                LOG.warning("dicom.scp.allow_list_empty any calling AE from any address is accepted")

            handlers: list[Any] = [
                (evt.EVT_CONN_OPEN, tune_connection),
                (evt.EVT_REQUESTED, self._on_requested),
                (evt.EVT_ACCEPTED, self._on_accepted),
                (evt.EVT_ABORTED, self._on_aborted),
                (evt.EVT_C_ECHO, self._on_c_echo),
                (evt.EVT_C_STORE, self._on_c_store),
                (evt.EVT_N_EVENT_REPORT, self._on_event_report),
            ]
            ssl_context = server_context(s.tls) if s.tls is not None else None
            self._server = cast(
                "ThreadedAssociationServer",
                ae.start_server((s.host, s.port), block=False, evt_handlers=handlers, ssl_context=ssl_context),
            )
            self._server.contexts = [_SharedUIDContext.of(cx) for cx in self._server.contexts]
            self._ae = ae
            LOG.info(
                "dicom.scp.started ae_title=%s extra_ae_titles=%s host=%s port=%d tls=%s", s.ae_title,
                ",".join(s.extra_ae_titles) or "-", s.host, self.port, ssl_context is not None,
            )

    def stop(self, grace_s: float = 5.0) -> None:
        """Stop accepting, give running associations ``grace_s`` to finish, then abort them."""
        with self._lock:
            server, self._server = self._server, None
            if server is None:
                return
            server.shutdown()
            deadline = time.monotonic() + grace_s
            while server.active_associations and time.monotonic() < deadline:
                time.sleep(0.05)
            for assoc in server.active_associations:
                assoc.abort()
            LOG.info("dicom.scp.stopped ae_title=%s", self.settings.ae_title)

    @property
    def is_running(self) -> bool:
        return self._server is not None

    @property
    def port(self) -> int:
        """The port actually listened on."""
        if self._server is None:
            raise RuntimeError("StorageSCP is not running")
        return int(self._server.server_address[1])

    def __enter__(self) -> StorageSCP:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- association events -----------------------------------------------------------------------
    def _is_allowed(self, calling_ae: str, address: str) -> bool:
        if self._allowed is None:
            return True
        return (calling_ae, _normalise_ip(address)) in self._allowed

    def _on_requested(self, event: evt.Event) -> None:
        assoc: Association = event.assoc
        calling = called = address = ""
        try:
            primitive = assoc.requestor.primitive
            calling = str(primitive.calling_ae_title if primitive else "").strip()
            called = str(primitive.called_ae_title if primitive else "").strip()
            address = assoc.requestor.address
            if not self._is_allowed(calling, address):
                rejection = _CALLING_AE_NOT_RECOGNISED
            elif called not in self._called_titles:
                rejection = _CALLED_AE_NOT_RECOGNISED
            else:
                return
        except Exception as exc:
            LOG.error("dicom.assoc.check_failed error=%s", type(exc).__name__)
            rejection = _CALLING_AE_NOT_RECOGNISED
        self._reject(assoc, rejection, calling, called, address)

    def _reject(self, assoc: Association, rejection: _Rejection, calling: str, called: str, address: str) -> None:
        """A-ASSOCIATE-RJ: rejected-permanent (1), DICOM UL service-user (1), ``rejection.diagnostic``."""
        # An unlisted title is not used as a label: peers must not choose our metrics' cardinality.
        known = {p.ae_title.strip() for p in self.settings.allowed_peers}
        metrics.ASSOCIATIONS.labels(calling if calling in known else "(unlisted)", "rejected").inc()
        LOG.warning(
            "dicom.assoc.rejected reason=%s calling_ae=%s called_ae=%s peer=%s",
            rejection.reason, calling, called, address,
        )
        assoc.acse.send_reject(0x01, 0x01, rejection.diagnostic)
        assoc.kill()

    def _on_accepted(self, event: evt.Event) -> None:
        assoc: Association = event.assoc
        metrics.ASSOCIATIONS.labels(assoc.requestor.ae_title.strip() or "-", "accepted").inc()
        primitive = assoc.requestor.primitive
        LOG.info(
            "dicom.assoc.accepted calling_ae=%s called_ae=%s peer=%s",
            assoc.requestor.ae_title.strip(),
            str(primitive.called_ae_title if primitive else "").strip(),
            assoc.requestor.address,
        )

    def _on_aborted(self, event: evt.Event) -> None:
        LOG.warning("dicom.assoc.aborted peer=%s", event.assoc.requestor.address)

    def _on_c_echo(self, event: evt.Event) -> int:
        LOG.info(
            "dicom.echo calling_ae=%s peer=%s",
            event.assoc.requestor.ae_title.strip(),
            event.assoc.requestor.address,
        )
        return st.SUCCESS

    # -- Storage Commitment reports ---------------------------------------------------------------
    def _on_event_report(self, event: evt.Event) -> tuple[int, Dataset | None]:
        calling = event.assoc.requestor.ae_title.strip()
        request: Any = event.request
        if self.commitment_sink is None or str(request.AffectedSOPClassUID) != STORAGE_COMMITMENT_PUSH:
            return 0x0118, None  # no such SOP class
        try:
            report = parse_report(int(request.EventTypeID), event.event_information)
            self.commitment_sink(report, calling)
        except Exception as exc:
            LOG.error("dicom.commitment.report_failed calling_ae=%s error=%s", calling, type(exc).__name__)
            return 0x0110, None  # processing failure: the PACS will report again
        LOG.info("dicom.commitment.report calling_ae=%s transaction=%s committed=%d failed=%d", calling,
                 report.transaction_uid, len(report.committed), len(report.failed))
        return 0x0000, None

    # -- C-STORE ----------------------------------------------------------------------------------
    def _on_c_store(self, event: evt.Event) -> Dataset | int:
        assoc: Association = event.assoc
        request = cast("C_STORE", event.request)
        context = event.context
        primitive = assoc.requestor.primitive
        origin = Origin(
            calling_ae_title=assoc.requestor.ae_title.strip(),
            called_ae_title=str(primitive.called_ae_title if primitive else assoc.acceptor.ae_title).strip(),
            peer_address=assoc.requestor.address,
        )
        requested_class = str(request.AffectedSOPClassUID or "").rstrip("\x00 ")
        try:
            if requested_class != str(context.abstract_syntax):
                raise IngestRefused(st.DATASET_MISMATCH, "SOP Class UID does not match the presentation context")
            try:
                encoded = event.encoded_dataset(include_meta=False)
            except AttributeError as exc:
                raise IngestRefused(st.CANNOT_UNDERSTAND, "C-STORE request without a data set") from exc
            self.ingestor.ingest(
                encoded, str(context.transfer_syntax), origin,
                expected_sop_class=requested_class,
                expected_sop_instance=str(request.AffectedSOPInstanceUID or ""),
            )
        except IngestRefused as exc:
            return _status(exc.status, exc.comment)
        return st.SUCCESS  # a bare status: no Dataset to build and copy on every instance
