"""A fast encoder for DIMSE command sets (Implicit VR Little Endian, group 0000).

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

__all__ = ["encode_command_set", "install"]

_INT_FORMATS = {"US": "<H", "UL": "<L"}
_TEXT_PADDING = {"UI": b"\x00", "AE": b" ", "CS": b" ", "LO": b" ", "SH": b" "}
_HEADER = struct.Struct("<HHL")


def _fast(ds: Dataset) -> bytes | None:
    """The Implicit VR Little Endian encoding of ``ds``, or None when an element needs pydicom."""
    out = bytearray()
    for elem in ds:
        tag = elem.tag
        value = elem.value
        vr = elem.VR
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
        out += _HEADER.pack(tag >> 16, tag & 0xFFFF, len(raw))
        out += raw
    return bytes(out)


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
