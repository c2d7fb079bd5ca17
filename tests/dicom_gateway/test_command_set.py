"""dicom_gateway.command_set writes exactly the bytes pydicom writes for every kind of command set."""

from __future__ import annotations

from io import BytesIO

import pytest
from pydicom.dataset import Dataset
from pynetdicom import dsutils
from pynetdicom.dimse_messages import (
    C_ECHO_RQ,
    C_ECHO_RSP,
    C_FIND_RSP,
    C_MOVE_RSP,
    C_STORE_RQ,
    C_STORE_RSP,
    N_EVENT_REPORT_RQ,
    DIMSEMessage,
)
from pynetdicom.dimse_primitives import C_ECHO, C_FIND, C_MOVE, C_STORE, N_EVENT_REPORT

from dicom_gateway.command_set import _fast, encode_command_set

CT = "1.2.840.10008.5.1.4.1.1.2"


def _message(cls: type[DIMSEMessage], primitive: object) -> Dataset:
    message = cls()
    message.primitive_to_message(primitive)  # type: ignore[arg-type]
    return message.command_set


def _store_rsp(status: int, comment: str | None, sop: str | None = "1.2.3.4.5.6.7.8.9.10.11.12") -> Dataset:
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = 65535
    rsp.AffectedSOPClassUID = CT
    rsp.AffectedSOPInstanceUID = sop
    rsp.Status = status
    if comment is not None:
        rsp.ErrorComment = comment
    return _message(C_STORE_RSP, rsp)


def _store_rq(sop: str, originator: str | None) -> Dataset:
    rq = C_STORE()
    rq.MessageID = 3
    rq.AffectedSOPClassUID = CT
    rq.AffectedSOPInstanceUID = sop
    rq.Priority = 2
    if originator:
        rq.MoveOriginatorApplicationEntityTitle = originator
        rq.MoveOriginatorMessageID = 9
    rq.DataSet = BytesIO(b"\x08\x00\x18\x00")
    return _message(C_STORE_RQ, rq)


def _echo() -> list[Dataset]:
    rq, rsp = C_ECHO(), C_ECHO()
    rq.MessageID = 1
    rq.AffectedSOPClassUID = "1.2.840.10008.1.1"
    rsp.MessageIDBeingRespondedTo = 1
    rsp.AffectedSOPClassUID = "1.2.840.10008.1.1"
    rsp.Status = 0
    return [_message(C_ECHO_RQ, rq), _message(C_ECHO_RSP, rsp)]


def _move_rsp() -> Dataset:
    rsp = C_MOVE()
    rsp.MessageIDBeingRespondedTo = 2
    rsp.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.2.2.2"
    rsp.Status = 0xFF00
    rsp.NumberOfRemainingSuboperations = 10
    rsp.NumberOfCompletedSuboperations = 290
    rsp.NumberOfFailedSuboperations = 0
    rsp.NumberOfWarningSuboperations = 1
    return _message(C_MOVE_RSP, rsp)


def _event_report() -> Dataset:
    rq = N_EVENT_REPORT()
    rq.MessageID = 4
    rq.AffectedSOPClassUID = "1.2.840.10008.1.20.1"
    rq.AffectedSOPInstanceUID = "1.2.840.10008.1.20.1.1"
    rq.EventTypeID = 1
    return _message(N_EVENT_REPORT_RQ, rq)


FAST_CASES = {
    "store-rsp success (even UID)": _store_rsp(0x0000, None),
    "store-rsp odd UID and comment": _store_rsp(0xA700, "out of resources: spool full", "1.2.3.4.5"),
    "store-rsp odd comment, no UID": _store_rsp(0xC000, "odd", None),
    "store-rq": _store_rq("1.2.826.0.1.3680043.8.498.12345678901234567890", None),
    "store-rq with move originator (odd AE)": _store_rq("1.2.3", "MOVER"),
    "echo-rq": _echo()[0],
    "echo-rsp": _echo()[1],
    "move-rsp with counts": _move_rsp(),
    "event-report-rq": _event_report(),
}


@pytest.mark.parametrize("name", sorted(FAST_CASES))
def test_fast_path_is_byte_identical_to_pydicom(name: str) -> None:
    command_set = FAST_CASES[name]
    assert _fast(command_set) is not None, "this command set should not need pydicom"
    assert encode_command_set(command_set, True, True) == dsutils.encode(command_set, True, True)


@pytest.mark.filterwarnings("ignore:Failed to encode value")  # the non-ASCII comment, as pydicom warns
def test_anything_else_is_left_to_pydicom() -> None:
    rsp = C_FIND()
    rsp.MessageIDBeingRespondedTo = 9
    rsp.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.2.2.1"
    rsp.Status = 0xA900
    rsp.OffendingElement = [0x00100010, 0x00100020]  # AT, two values
    rsp.ErrorComment = "x"
    find = _message(C_FIND_RSP, rsp)
    non_ascii = _store_rsp(0xC000, "lỗi")
    for command_set in (find, non_ascii):
        assert _fast(command_set) is None
        assert encode_command_set(command_set, True, True) == dsutils.encode(command_set, True, True)
    assert encode_command_set(find, False, True) == dsutils.encode(find, False, True)  # explicit VR
