"""DICOM UID validation (PS3.5 section 9) and the gateway's own implementation identity.

A UID is used to build spool paths, so validation is strict: digits and dots only, at most 64
characters, no empty component and no component with a leading zero (except the component "0").
A value that fails is never turned into a path.
"""

from __future__ import annotations

import re

from pydicom.uid import generate_uid

__all__ = [
    "IMPLEMENTATION_CLASS_UID",
    "IMPLEMENTATION_VERSION_NAME",
    "InvalidUIDError",
    "is_valid_uid",
    "validate_uid",
]

_UID_RE = re.compile(r"(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))*")
MAX_UID_LENGTH = 64

# A fixed UID for "this implementation" in the File Meta Information, derived deterministically
# under pydicom's UID root (its documented use of generate_uid with entropy sources).
IMPLEMENTATION_CLASS_UID: str = str(generate_uid(entropy_srcs=["tamsoat", "dicom_gateway", "1"]))
IMPLEMENTATION_VERSION_NAME = "TAMSOAT_010"  # SH, at most 16 characters


class InvalidUIDError(ValueError):
    """A value that must be a DICOM UID is missing or malformed.

    ``attribute`` names the attribute (e.g. ``SOPInstanceUID``); the offending value is kept out of
    the message on purpose (it may be arbitrary peer-supplied bytes).
    """

    def __init__(self, attribute: str, reason: str) -> None:
        super().__init__(f"{attribute}: {reason}")
        self.attribute = attribute
        self.reason = reason


def is_valid_uid(value: object) -> bool:
    """True when ``value`` is a ``str`` that is a well-formed DICOM UID."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_UID_LENGTH
        and _UID_RE.fullmatch(value) is not None
    )


def validate_uid(value: object, attribute: str) -> str:
    """Return ``value`` as a UID string or raise :class:`InvalidUIDError`.

    Trailing NUL/space padding (as sent on the wire for odd lengths) is removed first.
    """
    if value is None:
        raise InvalidUIDError(attribute, "missing")
    if not isinstance(value, str):
        raise InvalidUIDError(attribute, f"expected a single string, got {type(value).__name__}")
    uid = value.rstrip("\x00 ")
    if not uid:
        raise InvalidUIDError(attribute, "empty")
    if len(uid) > MAX_UID_LENGTH:
        raise InvalidUIDError(attribute, f"longer than {MAX_UID_LENGTH} characters")
    if _UID_RE.fullmatch(uid) is None:
        raise InvalidUIDError(attribute, "not a valid UID (digits and dots, no leading zeros)")
    return uid
