"""One way in for every received instance, whatever carried it (DIMSE C-STORE or STOW-RS).

:meth:`Ingestor.ingest` takes a data set exactly as received (its bytes after the File Meta
Information, in its transfer syntax, in the pieces they arrived in: P-DATA fragments are never
joined), reads only the header elements it needs from its first bytes (:mod:`dicom_gateway.header`),
checks the SOP class and UIDs, has the spool make it durable, hands it to the sink (the database
row) and only then returns. Anything that stops it raises
:class:`IngestRefused` with the DICOM status to answer (the SCP puts it in the C-STORE response,
STOW-RS in the FailureReason).

Logs carry event names, UIDs, AE titles and addresses; never patient names, IDs or birth dates.
"""

from __future__ import annotations

import errno
import logging
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pydicom.charset import convert_encodings, decode_bytes

from dicom_gateway import metrics
from dicom_gateway import status as st
from dicom_gateway.header import WANTED, HeaderError, scan_header
from dicom_gateway.spool import Chunk, OutOfResourcesError, Spool, SpoolFullError
from dicom_gateway.uids import InvalidUIDError, validate_uid

__all__ = [
    "DISPLAY_ATTRIBUTES",
    "IngestRefused",
    "Ingestor",
    "InstanceSink",
    "Origin",
    "StoredInstance",
]

LOG = logging.getLogger(__name__)

DISPLAY_ATTRIBUTES: tuple[str, ...] = (
    "PatientName",
    "PatientID",
    "AccessionNumber",
    "StudyDate",
    "StudyDescription",
    "Modality",
    "SeriesDescription",
)

# keyword -> tag of what the gateway reads from every header (dicom_gateway.header.WANTED has the VRs)
_TAGS: dict[str, int] = {
    "SpecificCharacterSet": 0x00080005,
    "SOPClassUID": 0x00080016,
    "SOPInstanceUID": 0x00080018,
    "StudyDate": 0x00080020,
    "AccessionNumber": 0x00080050,
    "Modality": 0x00080060,
    "StudyDescription": 0x00081030,
    "SeriesDescription": 0x0008103E,
    "PatientName": 0x00100010,
    "PatientID": 0x00100020,
    "StudyInstanceUID": 0x0020000D,
    "SeriesInstanceUID": 0x0020000E,
}


@dataclass(frozen=True)
class StoredInstance:
    """One instance durably spooled, handed to the :data:`InstanceSink`.

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
class Origin:
    """Who sent an instance, over what. For STOW-RS ``calling_ae_title`` is the user's name."""

    calling_ae_title: str
    called_ae_title: str
    peer_address: str
    source: str = "dimse"  # "dimse" or "stow"


class IngestRefused(Exception):
    """The instance was not stored; ``status`` is the DICOM status to answer, ``comment`` why."""

    def __init__(self, status: int, comment: str) -> None:
        super().__init__(comment)
        self.status = status
        self.comment = comment


def _header_uid(header: dict[int, bytes], keyword: str) -> str:
    raw = header.get(_TAGS[keyword])
    if raw is None:
        raise InvalidUIDError(keyword, "missing")
    return validate_uid(raw.decode("ascii", errors="replace"), keyword)


_HEADER_PREFIX = 64 * 1024  # the header elements we read sit in the first few hundred bytes


def _read_header(chunks: Sequence[Chunk], transfer_syntax: str) -> dict[int, bytes]:
    """The wanted header elements, read from the data set's first bytes; from all of them only when
    those do not reach past the last wanted element (e.g. large sequences before it)."""
    if sum(len(c) for c in chunks) > _HEADER_PREFIX:
        head: list[bytes] = []
        need = _HEADER_PREFIX
        for chunk in chunks:
            if need <= 0:
                break
            head.append(bytes(chunk[:need]))  # a copy of the first bytes only, whatever the chunk's size
            need -= len(head[-1])
        try:
            found = scan_header(b"".join(head), transfer_syntax, partial=True)
        except HeaderError:
            found = None  # an element runs past the prefix: read the whole data set below
        if found is not None:
            return found
    return scan_header(b"".join(chunks), transfer_syntax)


def _display_attributes(header: dict[int, bytes]) -> dict[str, str]:
    charset_raw = header.get(_TAGS["SpecificCharacterSet"])
    terms: list[str] = []
    if charset_raw:
        terms = [t.strip() for t in charset_raw.decode("ascii", errors="replace").rstrip("\x00 ").split("\\")]
    encodings = convert_encodings(terms or None)
    out: dict[str, str] = {}
    for keyword in DISPLAY_ATTRIBUTES:
        raw = header.get(_TAGS[keyword])
        if not raw:
            out[keyword] = ""
            continue
        vr = WANTED[_TAGS[keyword]]
        delimiters = {0x5C, 0x3D, 0x5E} if vr == "PN" else {0x5C}
        text = decode_bytes(raw, encodings, delimiters) if vr in ("PN", "LO", "SH") else raw.decode(
            "ascii", errors="replace"
        )
        out[keyword] = text.rstrip("\x00 ").strip()
    return out


class Ingestor:
    """Validate, spool durably and record one instance at a time (thread-safe)."""

    def __init__(self, spool: Spool, sink: InstanceSink) -> None:
        self.spool = spool
        self.sink = sink

    def ingest(
        self,
        chunks: Sequence[Chunk],
        transfer_syntax_uid: str,
        origin: Origin,
        *,
        expected_sop_class: str | None = None,
        expected_sop_instance: str | None = None,
        expected_study: str | None = None,
    ) -> StoredInstance:
        """Store one data set (``chunks``: its bytes, in one piece or as they arrived); returns once
        it is durable and recorded, else raises
        :class:`IngestRefused`. The ``expected_*`` values are what the carrier announced (the
        C-STORE request, the STOW-RS URL, the part's File Meta Information); a data set that
        disagrees with them is refused."""
        started = time.perf_counter()
        request_sop = (expected_sop_instance or "")[:64]
        try:
            stored = self._ingest(chunks, transfer_syntax_uid, origin, expected_sop_class,
                                  expected_sop_instance, expected_study)
        except IngestRefused as exc:
            self.refused(origin, request_sop, exc)
            raise
        except Exception as exc:
            # Type and stack only: exception messages (e.g. a database error echoing its
            # parameters) may carry patient data, which must never reach the log.
            LOG.error("dicom.store.failed source=%s sop=%s error=%s\n%s", origin.source, request_sop,
                      type(exc).__name__, "".join(traceback.format_tb(exc.__traceback__)).rstrip())
            self._count(origin, "rejected", st.PROCESSING_FAILURE, 0, started)
            raise IngestRefused(st.PROCESSING_FAILURE,
                                f"internal error while storing ({type(exc).__name__})") from exc
        LOG.info(
            "dicom.store.ok source=%s sop=%s series=%s study=%s version=%d duplicate=%s calling_ae=%s peer=%s",
            origin.source, stored.sop_instance_uid, stored.series_instance_uid, stored.study_instance_uid,
            stored.version, stored.duplicate, origin.calling_ae_title, origin.peer_address,
        )
        size = sum(len(c) for c in chunks)
        self._count(origin, "duplicate" if stored.duplicate else "stored", st.SUCCESS, size, started)
        return stored

    def refused(self, origin: Origin, sop_instance_uid: str, refusal: IngestRefused) -> None:
        """Log and count an instance that is not stored (also for refusals made before ingest, e.g.
        a data set over the size limit that the SCP dropped as it arrived)."""
        LOG.warning("dicom.store.refused source=%s sop=%s status=0x%04X reason=%s calling_ae=%s peer=%s",
                    origin.source, sop_instance_uid[:64], refusal.status, refusal.comment, origin.calling_ae_title,
                    origin.peer_address)
        self._count(origin, "rejected", refusal.status, 0, time.perf_counter())

    @staticmethod
    def _count(origin: Origin, outcome: str, status: int, size: int, started: float) -> None:
        ae = origin.calling_ae_title or "-"
        metrics.INSTANCES_RECEIVED.labels(ae, origin.source, outcome, metrics.status_label(status)).inc()
        if size:
            metrics.BYTES_RECEIVED.labels(ae, origin.source).inc(size)
            metrics.STORE_SECONDS.labels(origin.source).observe(time.perf_counter() - started)

    def _ingest(
        self,
        chunks: Sequence[Chunk],
        transfer_syntax: str,
        origin: Origin,
        expected_sop_class: str | None,
        expected_sop_instance: str | None,
        expected_study: str | None,
    ) -> StoredInstance:
        try:
            header = _read_header(chunks, transfer_syntax)
        except Exception as exc:
            raise IngestRefused(st.UNDECODABLE, f"cannot decode data set: {type(exc).__name__}") from exc

        try:
            sop_class = _header_uid(header, "SOPClassUID")
        except InvalidUIDError as exc:
            raise IngestRefused(st.INVALID_UIDS, str(exc)) from exc
        if expected_sop_class is not None and sop_class != expected_sop_class.rstrip("\x00 "):
            raise IngestRefused(st.DATASET_MISMATCH, "SOP Class UID does not match the request")
        try:
            sop = _header_uid(header, "SOPInstanceUID")
            study = _header_uid(header, "StudyInstanceUID")
            series = _header_uid(header, "SeriesInstanceUID")
        except InvalidUIDError as exc:
            raise IngestRefused(st.INVALID_UIDS, str(exc)) from exc
        if expected_sop_instance is not None and sop != expected_sop_instance.rstrip("\x00 "):
            raise IngestRefused(st.INVALID_UIDS, "SOP Instance UID does not match the request")
        if expected_study is not None and study != expected_study:
            raise IngestRefused(st.STUDY_MISMATCH, "Study Instance UID does not match the target study")
        try:
            attributes = _display_attributes(header)
        except Exception as exc:
            raise IngestRefused(st.UNDECODABLE, f"cannot decode display attributes: {type(exc).__name__}") from exc

        try:
            spooled = self.spool.store(
                chunks,
                sop_class_uid=sop_class,
                sop_instance_uid=sop,
                study_instance_uid=study,
                series_instance_uid=series,
                transfer_syntax_uid=transfer_syntax,
                source_ae_title=origin.calling_ae_title if origin.source == "dimse" else None,
            )
        except InvalidUIDError as exc:
            raise IngestRefused(st.INVALID_UIDS, str(exc)) from exc
        except SpoolFullError as exc:
            raise IngestRefused(st.OUT_OF_RESOURCES, "out of resources: spool full") from exc
        except OutOfResourcesError as exc:
            raise IngestRefused(st.OUT_OF_RESOURCES_IO, "out of resources: spool I/O error") from exc

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
            calling_ae_title=origin.calling_ae_title,
            called_ae_title=origin.called_ae_title,
            peer_address=origin.peer_address,
            attributes=attributes,
        )
        try:
            self.sink(instance)
        except SpoolFullError as exc:
            raise IngestRefused(st.OUT_OF_RESOURCES, "out of resources: disk full") from exc
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise IngestRefused(st.OUT_OF_RESOURCES, "out of resources: disk full") from exc
            raise
        except (OutOfResourcesError, MemoryError) as exc:
            LOG.warning("dicom.store.sink_busy sop=%s error=%s", sop, type(exc).__name__)
            raise IngestRefused(st.OUT_OF_RESOURCES_IO, "out of resources: try again later") from exc
        return instance
