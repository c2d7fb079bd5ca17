"""dicom_gateway.upper_layer reads the PDUs pynetdicom writes, and pynetdicom reads the PDUs it writes."""

from __future__ import annotations

import math
import struct

import pytest
from pynetdicom.pdu import A_ABORT_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ, A_RELEASE_RP, P_DATA_TF
from pynetdicom.pdu_items import PresentationDataValueItem
from pynetdicom.pdu_primitives import (
    A_ABORT,
    A_ASSOCIATE,
    A_P_ABORT,
    AsynchronousOperationsWindowNegotiation,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
    SOPClassExtendedNegotiation,
    UserIdentityNegotiation,
)
from pynetdicom.presentation import PresentationContext, build_context

from dicom_gateway import upper_layer as ul

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
VERIFICATION = "1.2.840.10008.1.1"
STORAGE_COMMITMENT = "1.2.840.10008.1.20.1"
IMPLICIT = "1.2.840.10008.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
DEFLATED = "1.2.840.10008.1.2.1.99"
JPEG_LOSSLESS = "1.2.840.10008.1.2.4.70"
PEER_IMPLEMENTATION = "1.2.826.0.1.3680043.9.3811.2.0.4"
OUR_IMPLEMENTATION = "1.2.826.0.1.3680043.10.1234.1"

PROPOSED = [
    (1, CT, [JPEG_LOSSLESS, EXPLICIT, IMPLICIT]),
    (3, MR, [DEFLATED, EXPLICIT]),
    (5, VERIFICATION, [IMPLICIT]),
    (7, STORAGE_COMMITMENT, [EXPLICIT, IMPLICIT]),
]


def _context(context_id: int, abstract: str, syntaxes: list[str]) -> PresentationContext:
    context = build_context(abstract, syntaxes)
    context.context_id = context_id
    return context


def _associate_rq(*, max_length: int = 32768, extra: bool = True) -> bytes:
    """An A-ASSOCIATE-RQ PDU as pynetdicom encodes it."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = ul.APPLICATION_CONTEXT
    primitive.calling_ae_title = "CT SCANNER 1"
    primitive.called_ae_title = "TAMSOAT"
    primitive.presentation_context_definition_list = [_context(*proposed) for proposed in PROPOSED]
    maximum = MaximumLengthNotification()
    maximum.maximum_length_received = max_length
    class_uid = ImplementationClassUIDNotification()
    class_uid.implementation_class_uid = PEER_IMPLEMENTATION
    version = ImplementationVersionNameNotification()
    version.implementation_version_name = "PYNETDICOM_304"
    info: list[object] = [maximum, class_uid, version]
    for sop_class, scu, scp in [(CT, True, False), (STORAGE_COMMITMENT, False, True)]:
        role = SCP_SCU_RoleSelectionNegotiation()
        role.sop_class_uid = sop_class
        role.scu_role = scu
        role.scp_role = scp
        info.append(role)
    if extra:
        window = AsynchronousOperationsWindowNegotiation()
        window.maximum_number_operations_invoked = 5
        window.maximum_number_operations_performed = 3
        identity = UserIdentityNegotiation()
        identity.user_identity_type = 2
        identity.primary_field = b"radiographer"
        identity.secondary_field = b"s3cret"
        identity.positive_response_requested = True
        extended = SOPClassExtendedNegotiation()
        extended.sop_class_uid = CT
        extended.service_class_application_information = b"\x02\x00\x01\x00"
        info += [window, identity, extended]
    primitive.user_information = info  # type: ignore[assignment]
    return A_ASSOCIATE_RQ(primitive).encode()


def _with_reserved(encoded: bytes, reserved: bytes) -> bytes:
    """``encoded`` (an A-ASSOCIATE-RQ) with its 32 reserved bytes (PDU bytes 43-74) replaced."""
    assert len(reserved) == 32
    return encoded[:42] + reserved + encoded[74:]


def test_parse_associate_rq_from_pynetdicom() -> None:
    encoded = _associate_rq()
    assert encoded[0] == ul.A_ASSOCIATE_RQ

    rq = ul.parse_associate_rq(encoded[6:])

    assert rq.called_ae_title == "TAMSOAT"
    assert rq.calling_ae_title == "CT SCANNER 1"
    assert rq.protocol_version == 1
    assert rq.application_context == ul.APPLICATION_CONTEXT
    assert rq.echoed == encoded[10:74]
    assert rq.echoed[:32] == b"TAMSOAT         CT SCANNER 1    "
    assert rq.contexts == [ul.ProposedContext(i, abstract, tuple(ts)) for i, abstract, ts in PROPOSED]
    assert rq.max_pdu == 32768
    assert rq.implementation_class_uid == PEER_IMPLEMENTATION
    assert rq.implementation_version_name == "PYNETDICOM_304"
    assert rq.roles == {CT: (True, False), STORAGE_COMMITMENT: (False, True)}

    # and pynetdicom reads the same from those bytes
    decoded = A_ASSOCIATE_RQ()
    decoded.decode(encoded)
    assert [c.context_id for c in decoded.presentation_context] == [c.id for c in rq.contexts]
    assert [c.abstract_syntax for c in decoded.presentation_context] == [c.abstract_syntax for c in rq.contexts]
    assert [tuple(c.transfer_syntax) for c in decoded.presentation_context] == [
        c.transfer_syntaxes for c in rq.contexts
    ]


@pytest.mark.parametrize("max_length", [0, 1 << 31])
def test_parse_associate_rq_max_length(max_length: int) -> None:
    rq = ul.parse_associate_rq(_associate_rq(max_length=max_length, extra=False)[6:])
    assert rq.max_pdu == max_length  # 0: the requestor takes PDUs of any length


def test_parse_associate_rq_keeps_the_reserved_bytes() -> None:
    reserved = bytes(range(0x41, 0x61))
    encoded = _with_reserved(_associate_rq(), reserved)
    rq = ul.parse_associate_rq(encoded[6:])
    assert rq.echoed == encoded[10:42] + reserved
    assert len(rq.contexts) == len(PROPOSED)


def _answers() -> list[ul.AcceptedContext]:
    return [
        ul.AcceptedContext(1, CT, 0, EXPLICIT),
        ul.AcceptedContext(3, MR, 4),  # transfer syntaxes not supported
        ul.AcceptedContext(5, VERIFICATION, 0, IMPLICIT),
        ul.AcceptedContext(7, STORAGE_COMMITMENT, 3),  # abstract syntax not supported
    ]


def _associate_ac(encoded_rq: bytes, version_name: str = "TAMSOAT_0_1") -> bytes:
    rq = ul.parse_associate_rq(encoded_rq[6:])
    return ul.associate_ac(
        rq, _answers(), max_pdu=65536, implementation_class_uid=OUR_IMPLEMENTATION,
        implementation_version_name=version_name, roles={CT: (True, False)},
    )


def test_associate_ac_decoded_by_pynetdicom() -> None:
    reserved = b"reserved field, as received. 32!"
    encoded_rq = _with_reserved(_associate_rq(), reserved)

    ac = _associate_ac(encoded_rq)

    assert ac[0] == ul.A_ASSOCIATE_AC
    assert struct.unpack_from(">L", ac, 2)[0] == len(ac) - 6
    assert ac[10:74] == encoded_rq[10:74]  # called, calling AE titles and the reserved field, echoed
    assert ac[42:74] == reserved
    decoded = A_ASSOCIATE_AC()
    decoded.decode(ac)
    assert decoded.protocol_version == 1
    assert decoded.reserved_aet == "TAMSOAT"
    assert decoded.reserved_aec == "CT SCANNER 1"
    assert decoded.application_context_name == ul.APPLICATION_CONTEXT
    results = {c.context_id: (c.result, c.transfer_syntax) for c in decoded.presentation_context}
    assert results[1] == (0, EXPLICIT)
    assert results[3][0] == 4
    assert results[5] == (0, IMPLICIT)
    assert results[7][0] == 3
    assert set(results) == {1, 3, 5, 7}
    user = decoded.user_information
    assert user is not None
    assert user.maximum_length == 65536
    assert user.implementation_class_uid == OUR_IMPLEMENTATION
    assert user.implementation_version_name == "TAMSOAT_0_1"
    roles = {uid: (item.scu_role, item.scp_role) for uid, item in user.role_selection.items()}
    assert roles == {CT: (1, 0)}
    assert user.async_ops_window is None  # declined by leaving it out
    assert user.user_identity is None


def test_associate_ac_reencoded_by_pynetdicom_is_identical() -> None:
    ac = _associate_ac(_associate_rq())  # the reserved field is zero: pynetdicom writes it so
    decoded = A_ASSOCIATE_AC()
    decoded.decode(ac)
    assert decoded.encode() == ac


def test_associate_ac_truncates_the_version_name() -> None:
    ac = _associate_ac(_associate_rq(), version_name="TAMSOAT_GATEWAY_1_2_3")
    decoded = A_ASSOCIATE_AC()
    decoded.decode(ac)
    assert decoded.user_information is not None
    assert decoded.user_information.implementation_version_name == "TAMSOAT_GATEWAY_"  # 16 bytes at most


def test_associate_ac_rejected_contexts_hold_a_transfer_syntax_sub_item() -> None:
    decoded = A_ASSOCIATE_AC()
    decoded.decode(_associate_ac(_associate_rq()))
    assert [len(c.transfer_syntax_sub_item) for c in decoded.presentation_context] == [1, 1, 1, 1]


@pytest.mark.parametrize(("result", "source", "reason"), [(1, 1, 1), (1, 1, 7), (2, 2, 2), (1, 3, 1), (2, 3, 2)])
def test_associate_rj_decoded_by_pynetdicom(result: int, source: int, reason: int) -> None:
    rj = ul.associate_rj(result, source, reason)
    decoded = A_ASSOCIATE_RJ()
    decoded.decode(rj)
    assert (decoded.result, decoded.source, decoded.reason_diagnostic) == (result, source, reason)
    primitive = A_ASSOCIATE()
    primitive.result = result
    primitive.result_source = source
    primitive.diagnostic = reason
    assert A_ASSOCIATE_RJ(primitive).encode() == rj


@pytest.mark.parametrize("reason", [0, 1, 2, 4, 5, 6])
def test_provider_abort_decoded_by_pynetdicom(reason: int) -> None:
    pdu = ul.abort_pdu(0x02, reason)
    decoded = A_ABORT_RQ()
    decoded.decode(pdu)
    assert (decoded.source, decoded.reason_diagnostic) == (2, reason)
    primitive = A_P_ABORT()
    primitive.provider_reason = reason
    assert A_ABORT_RQ(primitive).encode() == pdu


def test_abort_defaults_and_user_abort() -> None:
    assert ul.abort_pdu() == ul.abort_pdu(0x02, 0x00)
    decoded = A_ABORT_RQ()
    decoded.decode(ul.abort_pdu(0x00, 0x00))
    assert (decoded.source, decoded.reason_diagnostic) == (0, 0)
    primitive = A_ABORT()
    primitive.abort_source = 0
    assert A_ABORT_RQ(primitive).encode() == ul.abort_pdu(0x00, 0x00)
    assert bytes(A_RELEASE_RP().encode()) == ul.RELEASE_RP


def _pdv_item(context_id: int, control: int, fragment: bytes) -> PresentationDataValueItem:
    item = PresentationDataValueItem()
    item.presentation_context_id = context_id
    item.presentation_data_value = bytes((control,)) + fragment
    return item


def test_pdvs_of_a_pynetdicom_p_data_tf() -> None:
    command = bytes(range(256)) * 3
    expected = [(1, 0x03, command), (3, 0x00, b"\x08\x00" * 1000), (3, 0x00, b""), (3, 0x02, b"last"), (255, 0x02, b"")]
    pdu = P_DATA_TF()
    pdu.presentation_data_value_items = [_pdv_item(*pdv) for pdv in expected]
    encoded = pdu.encode()
    assert struct.unpack_from(">L", encoded, 2)[0] == len(encoded) - 6

    found = [(context_id, control, bytes(value)) for context_id, control, value in ul.pdvs(memoryview(encoded)[6:])]

    assert found == expected


MAX_PDUS = [0, 8, 9, 16, 100, 16384, 16390]
SIZES = [0, 1, 2, 3, 10, 100, 16377, 16378, 16379, 40_000]


@pytest.mark.parametrize("max_pdu", MAX_PDUS)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("is_command", [True, False])
def test_p_data_pdus(max_pdu: int, size: int, is_command: bool) -> None:
    data = bytes((i * 7 + i // 251) & 0xFF for i in range(size))

    parts = ul.p_data_pdus(5, is_command, data, max_pdu)
    assert all(isinstance(chunk, memoryview) and chunk.obj is data for chunk in parts[1::2])  # views, no copies
    pdus = [bytes(header) + bytes(chunk) for header, chunk in zip(parts[::2], parts[1::2], strict=True)]

    room = max_pdu - 6 if max_pdu else max(size, 1)
    assert len(pdus) == max(1, math.ceil(size / room))
    fragments = []
    for n, pdu in enumerate(pdus):
        assert pdu[0] == ul.P_DATA_TF
        length = struct.unpack_from(">L", pdu, 2)[0]
        assert length == len(pdu) - 6
        if max_pdu:
            assert length <= max_pdu
        decoded = P_DATA_TF()
        decoded.decode(pdu)
        [pdv] = decoded.presentation_data_value_items  # one PDV per PDU
        assert pdv.presentation_context_id == 5
        value = pdv.presentation_data_value
        assert value is not None
        control = value[0]
        last = n == len(pdus) - 1
        assert control == (0x01 if is_command else 0x00) | (0x02 if last else 0x00)
        if not last:
            assert length == max_pdu  # full PDUs but the last
        fragments.append(value[1:])
        assert [(c, m, bytes(v)) for c, m, v in ul.pdvs(memoryview(pdu)[6:])] == [(5, control, value[1:])]
    assert b"".join(fragments) == data


def test_p_data_pdus_smallest_max_pdu() -> None:
    parts = ul.p_data_pdus(1, False, b"abc", 7)
    pdus = [bytes(header) + bytes(chunk) for header, chunk in zip(parts[::2], parts[1::2], strict=True)]
    assert all(struct.unpack_from(">L", pdu, 2)[0] <= 7 for pdu in pdus)
    assert b"".join(pdu[12:] for pdu in pdus) == b"abc"


def _abort_meaning(reason: int) -> str:
    decoded = A_ABORT_RQ()
    decoded.decode(ul.abort_pdu(0x02, reason))
    return decoded.reason_str


def test_reason_constants_mean_what_ps3_8_says() -> None:
    assert _abort_meaning(ul.REASON_UNRECOGNIZED_PDU) == "Unrecognised PDU"
    assert _abort_meaning(ul.REASON_UNEXPECTED_PDU) == "Unexpected PDU"
    assert _abort_meaning(ul.REASON_UNRECOGNIZED_PARAMETER) == "Unrecognised PDU parameter"
    assert _abort_meaning(ul.REASON_UNEXPECTED_PARAMETER) == "Unexpected PDU parameter"
    assert _abort_meaning(ul.REASON_INVALID_PARAMETER) == "Invalid PDU parameter value"


def _items(body: bytes) -> list[tuple[int, int, int]]:
    """(offset, type, length) of the top-level items of an A-ASSOCIATE-RQ body."""
    found = []
    offset = 68
    while offset < len(body):
        kind, _, length = struct.unpack_from(">BBH", body, offset)
        found.append((offset, kind, length))
        offset += 4 + length
    return found


def _set_length(body: bytes, offset: int, length: int) -> bytes:
    return body[:offset + 2] + struct.pack(">H", length) + body[offset + 4:]


def _pdu_error(body: bytes) -> ul.PduError:
    with pytest.raises(ul.PduError) as info:
        ul.parse_associate_rq(body)
    return info.value


def test_item_longer_than_its_pdu() -> None:
    body = _associate_rq()[6:]
    offset, kind, length = _items(body)[-1]
    assert kind == 0x50  # user information, the last item
    error = _pdu_error(_set_length(body, offset, length + 1))
    assert error.reason == ul.REASON_INVALID_PARAMETER
    assert "longer than its PDU" in str(error)
    # the PDU cut short inside the first presentation context
    first = next(o for o, k, _ in _items(body) if k == 0x20)
    assert _pdu_error(body[:first + 10]).reason == ul.REASON_INVALID_PARAMETER


def test_sub_item_longer_than_its_item() -> None:
    body = _associate_rq()[6:]
    offset, _, length = next(item for item in _items(body) if item[1] == 0x20)
    sub = offset + 8  # the abstract syntax sub-item, after the context's 4 fixed bytes
    assert body[sub] == 0x30
    error = _pdu_error(_set_length(body, sub, length))  # past the end of its presentation context item
    assert error.reason == ul.REASON_INVALID_PARAMETER
    assert "presentation context" in str(error)


def test_truncated_item_header() -> None:
    error = _pdu_error(_associate_rq()[6:] + b"\x50\x00\x00")
    assert error.reason == ul.REASON_INVALID_PARAMETER
    assert "truncated item header" in str(error)


def test_shorter_than_the_fixed_fields() -> None:
    body = _associate_rq()[6:]
    assert _pdu_error(body[:67]).reason == ul.REASON_INVALID_PARAMETER
    assert ul.parse_associate_rq(body[:68]).contexts == []  # no items: not this module's business


def test_unknown_item_type() -> None:
    body = _associate_rq()[6:]
    offset = _items(body)[1][0]  # after the application context item
    error = _pdu_error(body[:offset] + b"\x60\x00\x00\x02ab" + body[offset:])
    assert error.reason == ul.REASON_UNRECOGNIZED_PARAMETER
    assert "0x60" in str(error)


def test_unknown_presentation_context_sub_item() -> None:
    body = _associate_rq()[6:]
    offset, _, length = next(item for item in _items(body) if item[1] == 0x20)
    extra = b"\x41\x00\x00\x01x"
    body = _set_length(body, offset, length + len(extra))
    end = offset + 4 + length
    error = _pdu_error(body[:end] + extra + body[end:])
    assert error.reason == ul.REASON_UNRECOGNIZED_PARAMETER
    assert "sub-item 0x41" in str(error)


def test_role_selection_with_a_wrong_length() -> None:
    body = _associate_rq(extra=False)[6:]
    at = body.index(b"\x54\x00")
    uid_length = struct.unpack_from(">H", body, at + 4)[0]
    body = body[:at + 4] + struct.pack(">H", uid_length - 1) + body[at + 6:]  # 1 byte left unaccounted
    error = _pdu_error(body)
    assert error.reason == ul.REASON_INVALID_PARAMETER
    assert "role selection" in str(error)


@pytest.mark.parametrize(
    "body",
    [
        b"\x00\x00\x00\x10\x01",  # 5 bytes: cut inside the PDV header
        b"\x00\x00\x00\x10\x01\x02" + b"x" * 13,  # the PDV claims 16 bytes, 15 are there
        b"\x00\x00\x00\x03\x01\x02x" + b"\x00\x00\x00\x04\x03",  # the second PDV is cut short
    ],
)
def test_truncated_pdv(body: bytes) -> None:
    with pytest.raises(ul.PduError) as info:
        list(ul.pdvs(memoryview(body)))
    assert info.value.reason == ul.REASON_INVALID_PARAMETER


@pytest.mark.parametrize(
    "body",
    [
        # a PDV of length 0; taken at its word, the bytes from offset 4 would read as a PDV of length 2
        b"\x00\x00\x00\x00" + b"\x00\x00\x00\x02\x01\x02",
        # a PDV of length 1; taken at its word, the bytes from offset 5 would read as a PDV of length 2
        b"\x00\x00\x00\x01\x01" + b"\x00\x00\x00\x02\x03\x02",
        struct.pack(">LBB", 1, 1, 0x02) + b"payload",
    ],
)
def test_pdv_length_below_two(body: bytes) -> None:
    with pytest.raises(ul.PduError, match="does not fit") as info:
        list(ul.pdvs(memoryview(body)))
    assert info.value.reason == ul.REASON_INVALID_PARAMETER


def test_pdvs_before_an_error_are_yielded() -> None:
    body = struct.pack(">LBB", 3, 1, 0x03) + b"c" + struct.pack(">LBB", 9, 1, 0x02)
    found = ul.pdvs(memoryview(body))
    context_id, control, value = next(found)
    assert (context_id, control, bytes(value)) == (1, 0x03, b"c")
    with pytest.raises(ul.PduError):
        next(found)
