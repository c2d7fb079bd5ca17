"""DIMSE command sets (Implicit VR Little Endian, group 0000), encoded and decoded without pydicom.

:func:`command` and :func:`parse_command` are what the gateway's own acceptor
(:mod:`dicom_gateway.acceptor`) speaks. For the associations pynetdicom still runs (our SCU side):

pynetdicom encodes every command set (each C-STORE request and response) twice with pydicom's
``write_dataset``, once for the Command Group Length and once to send: ~0.3 ms of CPU each, for a
handful of integers and UIDs. :func:`encode_command_set` writes those elements directly and returns
exactly the bytes pydicom would (``tests/dicom_gateway/test_command_set.py`` compares them); any
element it does not know how to write (another VR, several values, non-ASCII text) makes it hand
the whole data set to pydicom. :func:`install` puts it in place of
``pynetdicom.dimse_messages.encode``, the name through which pynetdicom 3.0 encodes command sets
(and nothing else); :func:`dicom_gateway.pynetdicom_tuning.install` calls it.
"""

from __future__ import annotations

import struct

from pydicom.dataset import Dataset
from pynetdicom import dimse_messages, dsutils

__all__ = ["Command", "command", "encode_command_set", "install", "parse_command"]

_INT_FORMATS = {"US": "<H", "UL": "<L"}
_TEXT_PADDING = {"UI": b"\x00", "AE": b" ", "CS": b" ", "LO": b" ", "SH": b" "}
_HEADER = struct.Struct("<HHL")


def _element(tag: int, vr: str, value: object) -> bytes | None:
    """One element, or None when it needs pydicom (another VR, several values, non-ASCII text)."""
    if value is None or value == "":
        raw = b""
    elif vr in _INT_FORMATS and type(value) is int:
        try:
            raw = struct.pack(_INT_FORMATS[vr], value)
        except struct.error:
            return None
    elif vr in _TEXT_PADDING and isinstance(value, str) and value.isascii() and "\\" not in value:
        raw = value.encode("ascii")
        if len(raw) % 2:
            raw += _TEXT_PADDING[vr]
    else:
        return None
    return _HEADER.pack(tag >> 16, tag & 0xFFFF, len(raw)) + raw


def _fast(ds: Dataset) -> bytes | None:
    """The Implicit VR Little Endian encoding of ``ds``, or None when an element needs pydicom."""
    out = bytearray()
    for elem in ds:
        raw = _element(elem.tag, elem.VR, elem.value)
        if raw is None:
            return None
        out += raw
    return bytes(out)


def command(*elements: tuple[int, str, int | str | None]) -> bytes:
    """A command set from ``(tag, VR, value)`` in ascending tag order, with its Command Group
    Length first; an element whose value is None is left out. Text must be ASCII (UIDs, AE titles,
    error comments are cut to 64 characters by the caller)."""
    out = bytearray()
    for tag, vr, value in elements:
        if value is None:
            continue
        raw = _element(tag, vr, value)
        if raw is None:
            raise ValueError(f"cannot encode ({tag >> 16:04X},{tag & 0xFFFF:04X}) {vr} {value!r}")
        out += raw
    return _HEADER.pack(0, 0, 4) + struct.pack("<L", len(out)) + bytes(out)


class Command(dict[int, bytes]):
    """A decoded command set: tag -> raw value, with typed getters."""

    def uid(self, tag: int) -> str:
        return self.get(tag, b"").decode("ascii", errors="replace").rstrip("\x00 ")

    def us(self, tag: int) -> int | None:
        raw = self.get(tag)
        return struct.unpack("<H", raw)[0] if raw is not None and len(raw) == 2 else None


def parse_command(raw: bytes) -> Command:
    """Decode a command set (Implicit VR Little Endian). Raises ValueError when it is malformed."""
    out = Command()
    offset = 0
    while offset < len(raw):
        if offset + 8 > len(raw):
            raise ValueError("truncated command element")
        group, element, length = _HEADER.unpack_from(raw, offset)
        if group != 0 or length == 0xFFFFFFFF or offset + 8 + length > len(raw):
            raise ValueError("malformed command set")
        out[element] = bytes(raw[offset + 8:offset + 8 + length])
        offset += 8 + length
    return out


def encode_command_set(
    ds: Dataset, is_implicit_vr: bool, is_little_endian: bool, deflated: bool = False
) -> bytes | None:
    """``pynetdicom.dsutils.encode`` with a fast path for command sets."""
    if is_implicit_vr and is_little_endian and not deflated:
        encoded = _fast(ds)
        if encoded is not None:
            return encoded
    return dsutils.encode(ds, is_implicit_vr, is_little_endian, deflated)


def install() -> None:
    dimse_messages.encode = encode_command_set
