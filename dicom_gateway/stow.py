"""DICOMweb STOW-RS (PS3.18 section 10.5): a ``multipart/related; type="application/dicom"`` request
body whose parts are DICOM Part-10 files, each stored through the same :class:`Ingestor` as a
C-STORE, answered with a Store Instances Response Module (Annex I) as DICOM JSON.

The body is parsed as it streams in and each part is stored as soon as it is complete, so a
request holds at most one part in memory, not the whole study. The HTTP routes (and their
authentication) live in the composition root; this module is the protocol.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from email.message import Message
from io import BytesIO
from typing import Any

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset, read_preamble

from dicom_gateway import status as st
from dicom_gateway.ingest import Ingestor, IngestRefused, Origin, StoredInstance
from dicom_gateway.uids import is_valid_uid

__all__ = [
    "DICOM_JSON",
    "MAX_PART_BYTES",
    "PartOutcome",
    "StowBadRequest",
    "StowResult",
    "StowUnsupportedMedia",
    "iter_parts",
    "parse_content_type",
    "store_part",
    "stow",
]

LOG = logging.getLogger(__name__)

DICOM_JSON = "application/dicom+json"
MAX_PART_BYTES = 4 << 30  # one instance; a larger part is refused (the request is then 400)
_HEADER_LIMIT = 16 << 10


class StowBadRequest(Exception):
    """The request is malformed (HTTP 400)."""


class StowUnsupportedMedia(Exception):
    """The request's media type is not one we store (HTTP 415)."""


@dataclass(frozen=True)
class PartOutcome:
    sop_class_uid: str
    sop_instance_uid: str
    status: int  # 0x0000 stored (or an identical re-send), else the Failure Reason
    comment: str = ""
    stored: StoredInstance | None = None


@dataclass(frozen=True)
class StowResult:
    http_status: int
    body: dict[str, Any]  # DICOM JSON of the Store Instances Response Module
    outcomes: list[PartOutcome]


def parse_content_type(value: str) -> tuple[str, dict[str, str]]:
    """``multipart/related; type="application/dicom"; boundary=x`` -> (media type, parameters)."""
    msg = Message()
    msg["content-type"] = value
    params = {k.lower(): v for k, v in (msg.get_params() or [])[1:]}
    return msg.get_content_type(), {k: str(v) for k, v in params.items()}


def _boundary(content_type: str) -> bytes:
    media, params = parse_content_type(content_type)
    if media != "multipart/related":
        raise StowUnsupportedMedia(f"expected multipart/related, got {media}")
    related = params.get("type", "application/dicom").strip().lower()
    if related != "application/dicom":
        raise StowUnsupportedMedia(f"only type=\"application/dicom\" parts are stored, not {related!r}")
    boundary = params.get("boundary", "")
    if not boundary or len(boundary) > 70:
        raise StowBadRequest("multipart/related without a valid boundary parameter")
    return boundary.encode("latin-1")


async def iter_parts(chunks: AsyncIterator[bytes], boundary: bytes) -> AsyncIterator[tuple[dict[str, str], bytes]]:
    """Yield (headers, body) of each part of a multipart body as it arrives (RFC 2046)."""
    delimiter = b"\r\n--" + boundary
    buf = bytearray(b"\r\n")  # so a delimiter on the body's first line matches like the others
    started = False  # the first delimiter was seen (what came before it is the preamble)
    done = False  # the close delimiter was seen (what comes after it is the epilogue)
    scan_from = 0
    async for chunk in chunks:
        if done:
            continue
        buf += chunk
        while True:
            at = buf.find(delimiter, scan_from)
            if at < 0:
                scan_from = max(0, len(buf) - len(delimiter))
                limit = MAX_PART_BYTES + _HEADER_LIMIT if started else _HEADER_LIMIT
                if len(buf) > limit:
                    raise StowBadRequest("a part is larger than this service stores" if started
                                         else "no multipart boundary at the start of the body")
                break
            after = at + len(delimiter)
            eol = buf.find(b"\r\n", after)
            closing = buf[after:after + 2] == b"--"
            if not closing and eol < 0:
                scan_from = at  # wait for the rest of the delimiter line
                break
            if started:
                yield _split_part(bytes(buf[:at]))
            started = True
            if closing:
                done = True
                buf.clear()
                break
            del buf[:eol + 2]  # the next part starts after the delimiter line (padding allowed)
            scan_from = 0
    if not started:
        raise StowBadRequest("no multipart boundary found in the body")
    if not done:
        raise StowBadRequest("the multipart body ends without its closing boundary")


def _split_part(raw: bytes) -> tuple[dict[str, str], bytes]:
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        if raw.startswith(b"\r\n"):  # a part without headers
            return {}, raw[2:]
        raise StowBadRequest("a part has no header/body separator")
    headers: dict[str, str] = {}
    for line in head.decode("latin-1").split("\r\n"):
        name, colon, value = line.partition(":")
        if colon:
            headers[name.strip().lower()] = value.strip()
    return headers, body


def _split_part10(data: bytes) -> tuple[Dataset, bytes]:
    """File Meta Information and the data set bytes after it, exactly as sent."""
    fp = BytesIO(data)
    read_preamble(fp, force=False)  # raises without the DICM prefix
    meta = read_dataset(fp, is_implicit_VR=False, is_little_endian=True,
                        stop_when=lambda tag, vr, length: tag.group != 2)
    return meta, data[fp.tell():]


def store_part(ingestor: Ingestor, headers: dict[str, str], body: bytes, origin: Origin,
               study: str | None, accepted_syntaxes: frozenset[str], storage_classes: frozenset[str]) -> PartOutcome:
    """Store one part; never raises for a problem with the part (that is its outcome)."""
    media = parse_content_type(headers.get("content-type", "application/dicom"))[0]
    if media != "application/dicom":
        return PartOutcome("", "", st.CANNOT_UNDERSTAND, f"part is {media}, not application/dicom")
    try:
        meta, encoded = _split_part10(body)
        sop_class = str(meta.get("MediaStorageSOPClassUID", "")).rstrip("\x00 ")
        sop = str(meta.get("MediaStorageSOPInstanceUID", "")).rstrip("\x00 ")
        syntax = str(meta.get("TransferSyntaxUID", "")).rstrip("\x00 ")
    except Exception as exc:
        return PartOutcome("", "", st.CANNOT_UNDERSTAND, f"not a DICOM Part-10 file ({type(exc).__name__})")
    ref_class = sop_class if is_valid_uid(sop_class) else ""
    ref_sop = sop if is_valid_uid(sop) else ""
    if not (ref_class and ref_sop and is_valid_uid(syntax)):
        return PartOutcome(ref_class, ref_sop, st.INVALID_UIDS, "File Meta Information lacks valid UIDs")
    if syntax not in accepted_syntaxes:
        return PartOutcome(ref_class, ref_sop, st.TRANSFER_SYNTAX_NOT_SUPPORTED, "transfer syntax not supported")
    if sop_class not in storage_classes:
        return PartOutcome(ref_class, ref_sop, st.SOP_CLASS_NOT_SUPPORTED, "not a storage SOP class")
    try:
        stored = ingestor.ingest((encoded,), syntax, origin, expected_sop_class=sop_class,
                                 expected_sop_instance=sop, expected_study=study)
    except IngestRefused as exc:
        return PartOutcome(ref_class, ref_sop, exc.status, exc.comment)
    return PartOutcome(ref_class, ref_sop, st.SUCCESS, stored=stored)


def response_for(outcomes: list[PartOutcome]) -> StowResult:
    """The Store Instances Response Module and the HTTP status PS3.18 Table 10.5.3-1 gives:
    200 all stored, 202 some stored, 409 none stored."""
    ds = Dataset()
    stored = [o for o in outcomes if o.status == st.SUCCESS]
    failed = [o for o in outcomes if o.status != st.SUCCESS and o.sop_instance_uid]
    other = [o for o in outcomes if o.status != st.SUCCESS and not o.sop_instance_uid]
    if stored:
        ds.ReferencedSOPSequence = [_ref(o) for o in stored]
    if failed:
        ds.FailedSOPSequence = [_ref(o, failure=True) for o in failed]
    if other:
        items = []
        for o in other:
            item = Dataset()
            item.FailureReason = o.status
            items.append(item)
        ds.OtherFailuresSequence = items
    if not outcomes:
        status = 400
    elif len(stored) == len(outcomes):
        status = 200
    elif stored:
        status = 202
    else:
        status = 409
    return StowResult(status, ds.to_json_dict(), outcomes)


def _ref(o: PartOutcome, failure: bool = False) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = o.sop_class_uid
    item.ReferencedSOPInstanceUID = o.sop_instance_uid
    if failure:
        item.FailureReason = o.status
    return item


async def stow(
    chunks: AsyncIterator[bytes],
    content_type: str,
    store: Callable[[dict[str, str], bytes], Awaitable[PartOutcome]],
) -> StowResult:
    """Run one STOW-RS request: parse the body as it streams, ``store`` each part (the caller runs
    :func:`store_part` off the event loop), answer with the response module. Raises
    :class:`StowUnsupportedMedia` (415) or :class:`StowBadRequest` (400)."""
    boundary = _boundary(content_type)
    outcomes: list[PartOutcome] = []
    async for headers, body in iter_parts(chunks, boundary):
        outcomes.append(await store(headers, body))
    return response_for(outcomes)
