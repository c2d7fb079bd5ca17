"""The receiving side: a Storage SCP (C-STORE for every storage SOP class) and Verification SCP.

Each received data set is kept exactly as it arrived (no decoding, no re-encoding); only the
header up to the pixel data is read, to check the SOP class and UIDs and to pick up a few display
attributes. The status answered is 0x0000 only after the spool has made the file durable and the
sink (which records the instance in the database) has returned.

Logs carry event names, UIDs, AE titles and addresses; never patient names, IDs or birth dates.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import threading
import time
import traceback
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from io import BytesIO
from typing import TYPE_CHECKING, Any, cast

from pydicom.charset import convert_encodings, decode_bytes
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag, Tag
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
from pynetdicom import AE, AllStoragePresentationContexts, evt

from dicom_gateway import status as st
from dicom_gateway.spool import OutOfResourcesError, Spool, SpoolFullError
from dicom_gateway.uids import InvalidUIDError, validate_uid
from tamsoat.core.settings import DicomSettings

if TYPE_CHECKING:
    from pynetdicom.association import Association
    from pynetdicom.dimse_primitives import C_STORE
    from pynetdicom.transport import ThreadedAssociationServer

__all__ = [
    "ACCEPTED_TRANSFER_SYNTAXES",
    "DISPLAY_ATTRIBUTES",
    "InstanceSink",
    "ScpTimeouts",
    "StorageSCP",
    "StoredInstance",
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

DISPLAY_ATTRIBUTES: tuple[str, ...] = (
    "PatientName",
    "PatientID",
    "AccessionNumber",
    "StudyDate",
    "StudyDescription",
    "Modality",
    "SeriesDescription",
)

# keyword -> (tag, VR); VRs are needed because an implicit VR data set does not carry them.
_HEADER_TAGS: dict[str, tuple[int, str]] = {
    "SpecificCharacterSet": (0x00080005, "CS"),
    "SOPClassUID": (0x00080016, "UI"),
    "SOPInstanceUID": (0x00080018, "UI"),
    "StudyDate": (0x00080020, "DA"),
    "AccessionNumber": (0x00080050, "SH"),
    "Modality": (0x00080060, "CS"),
    "StudyDescription": (0x00081030, "LO"),
    "SeriesDescription": (0x0008103E, "LO"),
    "PatientName": (0x00100010, "PN"),
    "PatientID": (0x00100020, "LO"),
    "StudyInstanceUID": (0x0020000D, "UI"),
    "SeriesInstanceUID": (0x0020000E, "UI"),
}
_SPECIFIC_TAGS: list[BaseTag | int] = [Tag(t) for t, _ in _HEADER_TAGS.values()]
_PIXEL_GROUP = 0x7FE00000
_ERROR_COMMENT_MAX = 64  # LO
VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"


@dataclass(frozen=True)
class StoredInstance:
    """One instance the SCP has durably spooled, handed to the :data:`InstanceSink`.

    ``duplicate`` is True when the same content was already spooled for this SOP Instance UID
    (``version`` and ``path`` are then those of the existing file). It is a hint: a sink that failed
    on the first attempt sees the peer's retry as a duplicate, so it should insert the row for
    ``(sop_instance_uid, version)`` when it is missing rather than skip it.
    ``attributes`` holds display attributes for the database only; never log them.
    """

    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    path: str
    sha256: str
    size: int
    version: int
    duplicate: bool
    calling_ae_title: str
    called_ae_title: str
    peer_address: str
    attributes: dict[str, str] = field(default_factory=dict)


InstanceSink = Callable[[StoredInstance], None]
"""Records a stored instance (writes the DB row). Raising gives the peer a failure status:
0xA7xx for :class:`~dicom_gateway.spool.OutOfResourcesError` (or ENOSPC), else 0xC001."""


@dataclass(frozen=True)
class ScpTimeouts:
    """Seconds. ``acse``: waiting for association messages; ``dimse``: waiting for DIMSE messages;
    ``network``: an idle association is aborted after this long."""

    acse: float = 30.0
    dimse: float = 60.0
    network: float = 120.0


class _Rejected(Exception):
    """A C-STORE request that gets a non-success status; carries the status and comment."""

    def __init__(self, status: int, comment: str) -> None:
        super().__init__(comment)
        self.status = status
        self.comment = comment


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


def read_header(encoded: bytes, transfer_syntax_uid: str) -> Dataset:
    """Parse the data set up to the pixel data, keeping only the elements the SCP needs (as raw,
    unconverted elements). Raises on a data set that cannot be decoded."""
    ts = UID(transfer_syntax_uid)
    data = encoded
    if ts.is_deflated:
        data = zlib.decompressobj(-zlib.MAX_WBITS).decompress(encoded)
    return read_dataset(
        BytesIO(data),
        is_implicit_VR=ts.is_implicit_VR,
        is_little_endian=ts.is_little_endian,
        stop_when=lambda tag, vr, length: tag >= _PIXEL_GROUP,
        specific_tags=_SPECIFIC_TAGS,
    )


def _raw_bytes(ds: Dataset, keyword: str) -> bytes | None:
    tag = _HEADER_TAGS[keyword][0]
    if tag not in ds:
        return None
    value = ds.get_item(tag).value  # raw bytes: nothing converted, nothing validated or logged
    if value is None:
        return None
    if isinstance(value, bytes):
        return value
    return str(value).encode("latin-1", errors="replace")


def _header_uid(ds: Dataset, keyword: str) -> str:
    raw = _raw_bytes(ds, keyword)
    if raw is None:
        raise InvalidUIDError(keyword, "missing")
    return validate_uid(raw.decode("ascii", errors="replace"), keyword)


def _display_attributes(ds: Dataset) -> dict[str, str]:
    charset_raw = _raw_bytes(ds, "SpecificCharacterSet")
    terms: list[str] = []
    if charset_raw:
        terms = [t.strip() for t in charset_raw.decode("ascii", errors="replace").split("\\")]
    encodings = convert_encodings(terms or None)
    out: dict[str, str] = {}
    for keyword in DISPLAY_ATTRIBUTES:
        raw = _raw_bytes(ds, keyword)
        if not raw:
            out[keyword] = ""
            continue
        vr = _HEADER_TAGS[keyword][1]
        delimiters = {0x5C, 0x3D, 0x5E} if vr == "PN" else {0x5C}
        text = decode_bytes(raw, encodings, delimiters) if vr in ("PN", "LO", "SH") else raw.decode(
            "ascii", errors="replace"
        )
        out[keyword] = text.rstrip("\x00 ").strip()
    return out


class StorageSCP:
    """Storage and Verification SCP in front of a :class:`~dicom_gateway.spool.Spool`.

    ``settings.port == 0`` binds a free port (see :attr:`port`); the kernel's validator forbids 0,
    so tests build the settings with ``model_copy(update={"port": 0})``.
    """

    def __init__(
        self,
        settings: DicomSettings,
        spool: Spool,
        sink: InstanceSink,
        timeouts: ScpTimeouts | None = None,
    ) -> None:
        self.settings = settings
        self.spool = spool
        self.sink = sink
        self.timeouts = timeouts or ScpTimeouts()
        self._server: ThreadedAssociationServer | None = None
        self._ae: AE | None = None
        self._allowed: set[tuple[str, str]] | None = None
        self._lock = threading.Lock()

    # -- life cycle -------------------------------------------------------------------------------
    def start(self) -> None:
        """Start listening; returns once the socket is bound (the server runs in threads)."""
        with self._lock:
            if self._server is not None:
                raise RuntimeError("StorageSCP already started")
            s = self.settings
            ae = AE(ae_title=s.ae_title)
            ae.maximum_pdu_size = s.max_pdu
            ae.maximum_associations = s.max_associations
            ae.acse_timeout = self.timeouts.acse
            ae.dimse_timeout = self.timeouts.dimse
            ae.network_timeout = self.timeouts.network
            for cx in AllStoragePresentationContexts:
                ae.add_supported_context(str(cx.abstract_syntax), list(ACCEPTED_TRANSFER_SYNTAXES))
            ae.add_supported_context(VERIFICATION_SOP_CLASS, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])

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
                (evt.EVT_REQUESTED, self._on_requested),
                (evt.EVT_ACCEPTED, self._on_accepted),
                (evt.EVT_ABORTED, self._on_aborted),
                (evt.EVT_C_ECHO, self._on_c_echo),
                (evt.EVT_C_STORE, self._on_c_store),
            ]
            self._server = cast(
                "ThreadedAssociationServer",
                ae.start_server((s.host, s.port), block=False, evt_handlers=handlers),
            )
            self._ae = ae
            LOG.info(
                "dicom.scp.started ae_title=%s host=%s port=%d", s.ae_title, s.host, self.port
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
        calling = ""
        address = ""
        try:
            primitive = assoc.requestor.primitive
            calling = str(primitive.calling_ae_title if primitive else "").strip()
            address = assoc.requestor.address
            allowed = self._is_allowed(calling, address)
        except Exception as exc:
            LOG.error("dicom.assoc.check_failed error=%s", type(exc).__name__)
            allowed = False
        if allowed:
            return
        LOG.warning(
            "dicom.assoc.rejected reason=calling_ae_not_recognised calling_ae=%s peer=%s",
            calling,
            address,
        )
        # A-ASSOCIATE-RJ: rejected-permanent (1), DICOM UL service-user (1),
        # calling-AE-title-not-recognized (3).
        assoc.acse.send_reject(0x01, 0x01, 0x03)
        assoc.kill()

    def _on_accepted(self, event: evt.Event) -> None:
        assoc: Association = event.assoc
        LOG.info(
            "dicom.assoc.accepted calling_ae=%s peer=%s",
            assoc.requestor.ae_title.strip(),
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

    # -- C-STORE ----------------------------------------------------------------------------------
    def _on_c_store(self, event: evt.Event) -> Dataset:
        request_sop = str(getattr(event.request, "AffectedSOPInstanceUID", "") or "")[:64]
        try:
            return self._store(event)
        except _Rejected as exc:
            LOG.warning(
                "dicom.store.refused sop=%s status=0x%04X reason=%s", request_sop, exc.status, exc.comment
            )
            return _status(exc.status, exc.comment)
        except Exception as exc:
            # Type and stack only: exception messages (e.g. a database error echoing its
            # parameters) may carry patient data, which must never reach the log.
            LOG.error(
                "dicom.store.failed event=%s sop=%s error=%s\n%s",
                event.event.name,
                request_sop,
                type(exc).__name__,
                "".join(traceback.format_tb(exc.__traceback__)).rstrip(),
            )
            return _status(st.PROCESSING_FAILURE, f"internal error while storing ({type(exc).__name__})")

    def _store(self, event: evt.Event) -> Dataset:
        assoc: Association = event.assoc
        request = cast("C_STORE", event.request)
        context = event.context
        transfer_syntax = str(context.transfer_syntax)
        try:
            encoded = event.encoded_dataset(include_meta=False)
        except AttributeError as exc:
            raise _Rejected(st.CANNOT_UNDERSTAND, "C-STORE request without a data set") from exc

        try:
            header = read_header(encoded, transfer_syntax)
        except Exception as exc:
            raise _Rejected(
                st.UNDECODABLE, f"cannot decode data set: {type(exc).__name__}"
            ) from exc

        try:
            sop_class = _header_uid(header, "SOPClassUID")
        except InvalidUIDError as exc:
            raise _Rejected(st.INVALID_UIDS, str(exc)) from exc
        requested_class = str(request.AffectedSOPClassUID or "").rstrip("\x00 ")
        if sop_class != requested_class or sop_class != str(context.abstract_syntax):
            raise _Rejected(st.DATASET_MISMATCH, "SOP Class UID does not match the request")
        try:
            sop = _header_uid(header, "SOPInstanceUID")
            study = _header_uid(header, "StudyInstanceUID")
            series = _header_uid(header, "SeriesInstanceUID")
        except InvalidUIDError as exc:
            raise _Rejected(st.INVALID_UIDS, str(exc)) from exc
        if sop != str(request.AffectedSOPInstanceUID or "").rstrip("\x00 "):
            raise _Rejected(st.INVALID_UIDS, "SOP Instance UID does not match the request")
        try:
            attributes = _display_attributes(header)
        except Exception as exc:
            raise _Rejected(
                st.UNDECODABLE, f"cannot decode display attributes: {type(exc).__name__}"
            ) from exc

        calling = assoc.requestor.ae_title.strip()
        primitive = assoc.requestor.primitive
        called = str(primitive.called_ae_title if primitive else assoc.acceptor.ae_title).strip()
        try:
            spooled = self.spool.store(
                encoded,
                sop_class_uid=sop_class,
                sop_instance_uid=sop,
                study_instance_uid=study,
                series_instance_uid=series,
                transfer_syntax_uid=transfer_syntax,
                source_ae_title=calling,
            )
        except InvalidUIDError as exc:
            raise _Rejected(st.INVALID_UIDS, str(exc)) from exc
        except SpoolFullError as exc:
            raise _Rejected(st.OUT_OF_RESOURCES, "out of resources: spool full") from exc
        except OutOfResourcesError as exc:
            raise _Rejected(st.OUT_OF_RESOURCES_IO, "out of resources: spool I/O error") from exc

        instance = StoredInstance(
            sop_instance_uid=sop,
            sop_class_uid=sop_class,
            study_instance_uid=study,
            series_instance_uid=series,
            transfer_syntax_uid=transfer_syntax,
            path=spooled.path_relative,
            sha256=spooled.sha256,
            size=spooled.size,
            version=spooled.version,
            duplicate=spooled.duplicate,
            calling_ae_title=calling,
            called_ae_title=called,
            peer_address=assoc.requestor.address,
            attributes=attributes,
        )
        try:
            self.sink(instance)
        except SpoolFullError as exc:
            raise _Rejected(st.OUT_OF_RESOURCES, "out of resources: disk full") from exc
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise _Rejected(st.OUT_OF_RESOURCES, "out of resources: disk full") from exc
            raise
        except (OutOfResourcesError, MemoryError) as exc:
            LOG.warning("dicom.store.sink_busy sop=%s error=%s", sop, type(exc).__name__)
            raise _Rejected(st.OUT_OF_RESOURCES_IO, "out of resources: try again later") from exc

        LOG.info(
            "dicom.store.ok sop=%s series=%s study=%s version=%d duplicate=%s calling_ae=%s peer=%s",
            sop,
            series,
            study,
            spooled.version,
            spooled.duplicate,
            calling,
            instance.peer_address,
        )
        return _status(st.SUCCESS)
