"""The DICOM Upper Layer protocol's PDUs (PS3.8 section 9), as our acceptor and requestor read and
write them.

The acceptor (:mod:`dicom_gateway.acceptor`) decodes A-ASSOCIATE-RQ (with its presentation contexts
and user information) and encodes A-ASSOCIATE-AC/RJ and A-RELEASE-RP; the requestor
(:mod:`dicom_gateway.requestor`) encodes A-ASSOCIATE-RQ and A-RELEASE-RQ and decodes
A-ASSOCIATE-AC/RJ; both read and write P-DATA-TF and A-ABORT. Everything a peer sends is checked
against the lengths it declares; a malformed PDU raises :class:`PduError` with the A-ABORT reason
to answer.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

__all__ = [
    "APPLICATION_CONTEXT",
    "A_ABORT",
    "A_ASSOCIATE_AC",
    "A_ASSOCIATE_RJ",
    "A_ASSOCIATE_RQ",
    "A_RELEASE_RP",
    "A_RELEASE_RQ",
    "P_DATA_TF",
    "RELEASE_RQ",
    "AcceptedContext",
    "AssociateAccept",
    "AssociateRequest",
    "PduError",
    "ProposedContext",
    "abort_pdu",
    "associate_ac",
    "associate_rj",
    "associate_rq",
    "p_data_pdus",
    "parse_associate_ac",
    "parse_associate_rq",
    "pdvs",
]

A_ASSOCIATE_RQ = 0x01
A_ASSOCIATE_AC = 0x02
A_ASSOCIATE_RJ = 0x03
P_DATA_TF = 0x04
A_RELEASE_RQ = 0x05
A_RELEASE_RP = 0x06
A_ABORT = 0x07

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
_IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"

# A-ABORT reasons (PS3.8 9.3.8), source 2 = DICOM UL service-provider.
REASON_UNRECOGNIZED_PDU = 0x01
REASON_UNEXPECTED_PDU = 0x02
REASON_UNRECOGNIZED_PARAMETER = 0x04
REASON_UNEXPECTED_PARAMETER = 0x05
REASON_INVALID_PARAMETER = 0x06

_HEADER = struct.Struct(">BBL")
_ITEM = struct.Struct(">BBH")
_PDV = struct.Struct(">LBB")


class PduError(Exception):
    """A PDU that breaks PS3.8; ``reason`` is the A-ABORT reason (source: service provider)."""

    def __init__(self, reason: int, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ProposedContext:
    id: int
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]


@dataclass(frozen=True)
class AcceptedContext:
    """The answer to one proposed context: ``result`` 0 acceptance, 3 abstract syntax not
    supported, 4 transfer syntaxes not supported (PS3.8 9.3.3.2)."""

    id: int
    abstract_syntax: str
    result: int
    transfer_syntax: str = ""


@dataclass
class AssociateRequest:
    called_ae_title: str
    calling_ae_title: str
    protocol_version: int
    application_context: str
    echoed: bytes  # the called and calling AE titles and the reserved field, as received (PS3.8 9.3.3)
    contexts: list[ProposedContext] = field(default_factory=list)
    max_pdu: int = 0  # the requestor's maximum P-DATA-TF length; 0: no limit
    implementation_class_uid: str = ""
    implementation_version_name: str = ""
    roles: dict[str, tuple[bool, bool]] = field(default_factory=dict)  # SOP class -> (SCU, SCP)


def _text(raw: bytes) -> str:
    return raw.decode("ascii", errors="replace").rstrip("\x00 ").strip()


def _items(body: bytes | memoryview, what: str) -> Iterator[tuple[int, memoryview]]:
    view = memoryview(body)
    offset = 0
    while offset < len(view):
        if offset + 4 > len(view):
            raise PduError(REASON_INVALID_PARAMETER, f"{what}: truncated item header")
        kind, _, length = _ITEM.unpack_from(view, offset)
        end = offset + 4 + length
        if end > len(view):
            raise PduError(REASON_INVALID_PARAMETER, f"{what}: item 0x{kind:02X} longer than its PDU")
        yield kind, view[offset + 4:end]
        offset = end


def _presentation_context(value: memoryview) -> ProposedContext:
    if len(value) < 4:
        raise PduError(REASON_INVALID_PARAMETER, "presentation context item too short")
    context_id = value[0]
    abstract = ""
    syntaxes: list[str] = []
    for kind, sub in _items(value[4:], "presentation context"):
        if kind == 0x30:
            abstract = _text(bytes(sub))
        elif kind == 0x40:
            syntaxes.append(_text(bytes(sub)))
        else:
            raise PduError(REASON_UNRECOGNIZED_PARAMETER, f"presentation context sub-item 0x{kind:02X}")
    return ProposedContext(context_id, abstract, tuple(syntaxes))


def _user_information(value: memoryview, rq: AssociateRequest) -> None:
    for kind, sub in _items(value, "user information"):
        if kind == 0x51:
            if len(sub) != 4:
                raise PduError(REASON_INVALID_PARAMETER, "maximum length item with a wrong length")
            rq.max_pdu = struct.unpack(">L", sub)[0]
        elif kind == 0x52:
            rq.implementation_class_uid = _text(bytes(sub))
        elif kind == 0x55:
            rq.implementation_version_name = _text(bytes(sub))
        elif kind == 0x54 and len(sub) >= 4:
            uid_length = struct.unpack_from(">H", sub)[0]
            if len(sub) != 2 + uid_length + 2:
                raise PduError(REASON_INVALID_PARAMETER, "SCP/SCU role selection item with a wrong length")
            uid = _text(bytes(sub[2:2 + uid_length]))
            rq.roles[uid] = (bool(sub[2 + uid_length]), bool(sub[3 + uid_length]))
        # Asynchronous operations window (0x53), extended negotiation (0x56, 0x57) and user
        # identity (0x58) need no answer: leaving them out of the A-ASSOCIATE-AC declines them,
        # so operations stay synchronous and no identity is confirmed.


def parse_associate_rq(body: bytes) -> AssociateRequest:
    """Decode the variable part of an A-ASSOCIATE-RQ (everything after the 6-byte PDU header)."""
    if len(body) < 68:
        raise PduError(REASON_INVALID_PARAMETER, "A-ASSOCIATE-RQ shorter than its fixed fields")
    version = struct.unpack_from(">H", body)[0]
    rq = AssociateRequest(
        called_ae_title=_text(body[4:20]), calling_ae_title=_text(body[20:36]), protocol_version=version,
        application_context="", echoed=bytes(body[4:68]),
    )
    for kind, value in _items(memoryview(body)[68:], "A-ASSOCIATE-RQ"):
        if kind == 0x10:
            rq.application_context = _text(bytes(value))
        elif kind == 0x20:
            rq.contexts.append(_presentation_context(value))
        elif kind == 0x50:
            _user_information(value, rq)
        else:
            raise PduError(REASON_UNRECOGNIZED_PARAMETER, f"A-ASSOCIATE-RQ item 0x{kind:02X}")
    return rq


def _item(kind: int, value: bytes) -> bytes:
    return _ITEM.pack(kind, 0, len(value)) + value


def _uid(value: str) -> bytes:
    return value.encode("ascii")  # UIDs in PDU items are not padded (PS3.8 9.3.2.2)


def associate_ac(
    rq: AssociateRequest,
    answers: list[AcceptedContext],
    *,
    max_pdu: int,
    implementation_class_uid: str,
    implementation_version_name: str,
    roles: dict[str, tuple[bool, bool]],
) -> bytes:
    """The A-ASSOCIATE-AC for ``rq``. ``roles`` are the role selections accepted (SOP class ->
    requestor may be SCU, SCP), answered only for those the requestor proposed."""
    items = [_item(0x10, _uid(APPLICATION_CONTEXT))]
    for answer in answers:
        # One Transfer Syntax sub-item whatever the result (PS3.8 9.3.3.2); not significant unless accepted.
        syntax = _item(0x40, _uid(answer.transfer_syntax or _IMPLICIT_VR_LITTLE_ENDIAN))
        items.append(_item(0x21, bytes((answer.id, 0, answer.result, 0)) + syntax))
    user = [
        _item(0x51, struct.pack(">L", max_pdu)),
        _item(0x52, _uid(implementation_class_uid)),
    ]
    for uid, (scu, scp) in roles.items():
        raw = _uid(uid)
        user.append(_item(0x54, struct.pack(">H", len(raw)) + raw + bytes((int(scu), int(scp)))))
    user.append(_item(0x55, implementation_version_name.encode("ascii")[:16]))
    items.append(_item(0x50, b"".join(user)))
    body = struct.pack(">HH", 0x0001, 0) + rq.echoed + b"".join(items)
    return _HEADER.pack(A_ASSOCIATE_AC, 0, len(body)) + body


def associate_rj(result: int, source: int, reason: int) -> bytes:
    return _HEADER.pack(A_ASSOCIATE_RJ, 0, 4) + bytes((0, result, source, reason))


def abort_pdu(source: int = 0x02, reason: int = 0x00) -> bytes:
    """A-ABORT; source 0: service user (us, on purpose), 2: service provider (a protocol error)."""
    return _HEADER.pack(A_ABORT, 0, 4) + bytes((0, 0, source, reason))


RELEASE_RP = _HEADER.pack(A_RELEASE_RP, 0, 4) + b"\x00" * 4
RELEASE_RQ = _HEADER.pack(A_RELEASE_RQ, 0, 4) + b"\x00" * 4


def _ae(title: str) -> bytes:
    return title.encode("ascii", errors="replace")[:16].ljust(16, b" ")


def associate_rq(
    *,
    called_ae_title: str,
    calling_ae_title: str,
    contexts: list[ProposedContext],
    max_pdu: int,
    implementation_class_uid: str,
    implementation_version_name: str,
) -> bytes:
    """An A-ASSOCIATE-RQ proposing ``contexts`` (odd IDs, at most 128)."""
    items = [_item(0x10, _uid(APPLICATION_CONTEXT))]
    for cx in contexts:
        sub = _item(0x30, _uid(cx.abstract_syntax)) + b"".join(_item(0x40, _uid(ts)) for ts in cx.transfer_syntaxes)
        items.append(_item(0x20, bytes((cx.id, 0, 0, 0)) + sub))
    user = (_item(0x51, struct.pack(">L", max_pdu)) + _item(0x52, _uid(implementation_class_uid))
            + _item(0x55, implementation_version_name.encode("ascii")[:16]))
    items.append(_item(0x50, user))
    body = struct.pack(">HH", 0x0001, 0) + _ae(called_ae_title) + _ae(calling_ae_title) + bytes(32) + b"".join(items)
    return _HEADER.pack(A_ASSOCIATE_RQ, 0, len(body)) + body


@dataclass
class AssociateAccept:
    """What an A-ASSOCIATE-AC says: per context ID (result, transfer syntax), and the acceptor's
    maximum P-DATA-TF length (0: no limit)."""

    contexts: dict[int, tuple[int, str]] = field(default_factory=dict)
    max_pdu: int = 0


def parse_associate_ac(body: bytes) -> AssociateAccept:
    """Decode the variable part of an A-ASSOCIATE-AC (everything after the 6-byte PDU header)."""
    if len(body) < 68:
        raise PduError(REASON_INVALID_PARAMETER, "A-ASSOCIATE-AC shorter than its fixed fields")
    ac = AssociateAccept()
    for kind, value in _items(memoryview(body)[68:], "A-ASSOCIATE-AC"):
        if kind == 0x21:
            if len(value) < 4:
                raise PduError(REASON_INVALID_PARAMETER, "presentation context item too short")
            syntax = ""
            for sub_kind, sub in _items(value[4:], "presentation context"):
                if sub_kind == 0x40:
                    syntax = _text(bytes(sub))
            ac.contexts[value[0]] = (value[2], syntax)
        elif kind == 0x50:
            for sub_kind, sub in _items(value, "user information"):
                if sub_kind == 0x51:
                    if len(sub) != 4:
                        raise PduError(REASON_INVALID_PARAMETER, "maximum length item with a wrong length")
                    ac.max_pdu = struct.unpack(">L", sub)[0]
    return ac


def pdvs(body: memoryview) -> Iterator[tuple[int, int, memoryview]]:
    """The PDV items of a P-DATA-TF body: (presentation context ID, message control header, data)."""
    offset = 0
    while offset < len(body):
        if offset + 6 > len(body):
            raise PduError(REASON_INVALID_PARAMETER, "P-DATA-TF: truncated PDV item")
        length, context_id, control = _PDV.unpack_from(body, offset)
        end = offset + 4 + length
        if length < 2 or end > len(body):
            raise PduError(REASON_INVALID_PARAMETER, "P-DATA-TF: PDV item length does not fit the PDU")
        yield context_id, control, body[offset + 6:end]
        offset = end


def p_data_pdus(context_id: int, is_command: bool, data: bytes | memoryview, max_pdu: int) -> list[bytes | memoryview]:
    """``data`` as P-DATA-TF PDUs of one PDV each, none longer than ``max_pdu`` (0: no limit), in
    pieces to send one after the other: each PDU's 12 header bytes, then its part of ``data`` (a
    view, not a copy)."""
    view = memoryview(data)
    room = (max_pdu - 6) if max_pdu else len(view) or 1  # a PDV item takes 6 bytes of the PDU
    room = max(room, 1)
    parts: list[bytes | memoryview] = []
    offset = 0
    while True:
        chunk = view[offset:offset + room]
        offset += len(chunk)
        control = (0x01 if is_command else 0x00) | (0x02 if offset >= len(view) else 0x00)
        parts += (_HEADER.pack(P_DATA_TF, 0, len(chunk) + 6) + _PDV.pack(len(chunk) + 2, context_id, control), chunk)
        if offset >= len(view):
            return parts
