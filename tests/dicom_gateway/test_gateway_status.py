"""C-STORE status classification and UID validation (pure functions)."""

from __future__ import annotations

import pytest

from dicom_gateway.status import classify_store_status
from dicom_gateway.uids import InvalidUIDError, is_valid_uid, validate_uid


@pytest.mark.parametrize(
    ("status", "outcome", "warning"),
    [
        (0x0000, "success", False),
        (0xB000, "success", True),
        (0xB006, "success", True),
        (0xB007, "success", True),
        (0xA700, "retry", False),
        (0xA7FF, "retry", False),
        (0x0213, "retry", False),
        (None, "retry", False),
        (0xA900, "dead", False),
        (0xA9FF, "dead", False),
        (0xC000, "dead", False),
        (0xC210, "dead", False),
        (0xCFFF, "dead", False),
        (0x0122, "dead", False),
        (0x0124, "dead", False),
        (0xFE00, "dead", False),
        (0x1234, "dead", False),
    ],
)
def test_classify_store_status(status: int | None, outcome: str, warning: bool) -> None:
    result = classify_store_status(status)
    assert result.outcome == outcome
    assert result.warning is warning
    assert result.reason


def test_reason_carries_code_and_error_comment() -> None:
    result = classify_store_status(0xA900, "SOP Class UID does not match")
    assert "0xA900" in result.reason and "SOP Class UID does not match" in result.reason
    assert "0xC000" in classify_store_status(0xC000).reason
    assert "out of resources" in classify_store_status(0xA700).reason


@pytest.mark.parametrize(
    "uid",
    ["1.2.840.10008.5.1.4.1.1.2", "0", "0.0", "2.25.1234567890123456789", "1.2.0.3", "1" * 64],
)
def test_valid_uids(uid: str) -> None:
    assert is_valid_uid(uid)
    assert validate_uid(uid, "X") == uid


@pytest.mark.parametrize(
    "uid", ["", ".", "1.", ".1", "1..2", "01", "1.02", "1.2.a", "1 .2", "../x", "1/2", "1" * 65, "1.2\\1.3"]
)
def test_invalid_uids(uid: str) -> None:
    assert not is_valid_uid(uid)
    with pytest.raises(InvalidUIDError):
        validate_uid(uid, "SOPInstanceUID")


def test_validate_uid_strips_wire_padding_and_rejects_non_strings() -> None:
    assert validate_uid("1.2.3\x00", "X") == "1.2.3"
    assert validate_uid("1.2.3 ", "X") == "1.2.3"
    with pytest.raises(InvalidUIDError, match="missing"):
        validate_uid(None, "SOPClassUID")
    with pytest.raises(InvalidUIDError):
        validate_uid(["1.2", "1.3"], "SOPClassUID")
