"""The association acceptor against peers that break the protocol (raw sockets) and against
pynetdicom requestors that negotiate and fragment in every legal way."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
)
from pynetdicom import AE, build_role
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicom_gateway import status as st
from dicom_gateway.command_set import command, parse_command
from dicom_gateway.commitment import STORAGE_COMMITMENT_PUSH
from dicom_gateway.scp import ScpTimeouts, StorageSCP
from dicom_gateway.spool import Spool
from tamsoat.core.settings import DicomSettings
from tests.dicom_gateway.gateway_helpers import SCP_AE, RecordingSink, dataset_bytes, make_ct_dataset

VERIFICATION = "1.2.840.10008.1.1"
APP_CONTEXT = b"1.2.840.10008.3.1.1.1"


# -- a raw requestor ---------------------------------------------------------------------------------


def _item(kind: int, value: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(value)) + value


def associate_rq(contexts: list[tuple[int, str, list[str]]], *, version: int = 1, app: bytes = APP_CONTEXT,
                 called: str = SCP_AE, max_pdu: int = 16384) -> bytes:
    items = [_item(0x10, app)]
    for cid, abstract, syntaxes in contexts:
        sub = _item(0x30, abstract.encode()) + b"".join(_item(0x40, ts.encode()) for ts in syntaxes)
        items.append(_item(0x20, bytes((cid, 0, 0, 0)) + sub))
    items.append(_item(0x50, _item(0x51, struct.pack(">L", max_pdu)) + _item(0x52, b"1.2.3.4")))
    body = struct.pack(">HH", version, 0) + called.encode().ljust(16) + b"RAWPEER".ljust(16) + bytes(32)
    body += b"".join(items)
    return struct.pack(">BBL", 0x01, 0, len(body)) + body


def p_data(cid: int, control: int, data: bytes) -> bytes:
    pdv = struct.pack(">LBB", len(data) + 2, cid, control) + data
    return struct.pack(">BBL", 0x04, 0, len(pdv)) + pdv


class RawPeer:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _exactly(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise ConnectionError("closed")
            out += chunk
        return out

    def pdu(self) -> tuple[int, bytes]:
        kind, _, length = struct.unpack(">BBL", self._exactly(6))
        return kind, self._exactly(length)

    def closed(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except (ConnectionError, TimeoutError):
            return True

    def associate(self, contexts: list[tuple[int, str, list[str]]]) -> bytes:
        self.send(associate_rq(contexts))
        kind, body = self.pdu()
        assert kind == 0x02, f"expected A-ASSOCIATE-AC, got 0x{kind:02X}"
        return body

    def close(self) -> None:
        self.sock.close()


QUICK = ScpTimeouts(5, 5, 5)


def own_scp(tmp_path: Path, timeouts: ScpTimeouts = QUICK, **settings: object) -> StorageSCP:
    """A StorageSCP on 127.0.0.1 (a free port) with ``settings``, a throw-away spool and a recording sink."""
    config = DicomSettings(**{"ae_title": SCP_AE, "host": "127.0.0.1", **settings})  # type: ignore[arg-type]
    return StorageSCP(config.model_copy(update={"port": 0}), Spool(tmp_path / "spool", fsync=False),
                      RecordingSink(), timeouts)


@pytest.fixture
def scp(tmp_path: Path) -> Iterator[StorageSCP]:
    settings = DicomSettings(ae_title=SCP_AE, host="127.0.0.1", max_pdu=16384,
                             max_dataset_bytes=1 << 20).model_copy(update={"port": 0})
    server = StorageSCP(settings, Spool(tmp_path / "spool", fsync=False), RecordingSink(),
                        ScpTimeouts(acse=10, dimse=10, network=10), commitment_sink=lambda report, ae: None)
    server.start()
    try:
        yield server
    finally:
        server.stop(grace_s=1)


def _echo_ok(port: int) -> bool:
    ae = AE(ae_title="CHECK")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(VERIFICATION)
    assoc = ae.associate("127.0.0.1", port, ae_title=SCP_AE)
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return bool(status) and status.Status == 0


def _abort_reason(peer: RawPeer) -> tuple[int, int]:
    kind, body = peer.pdu()
    assert kind == 0x07, f"expected A-ABORT, got 0x{kind:02X}"
    return body[2], body[3]  # source, reason


# -- association establishment ------------------------------------------------------------------------


def test_unsupported_protocol_version_is_rejected(scp: StorageSCP) -> None:
    peer = RawPeer(scp.port)
    peer.send(associate_rq([(1, VERIFICATION, [ImplicitVRLittleEndian])], version=2))
    kind, body = peer.pdu()
    # rejected-permanent, service-provider (ACSE), protocol-version-not-supported
    assert (kind, body[1], body[2], body[3]) == (0x03, 0x01, 0x02, 0x02)
    peer.close()


def test_unknown_application_context_is_rejected(scp: StorageSCP) -> None:
    peer = RawPeer(scp.port)
    peer.send(associate_rq([(1, VERIFICATION, [ImplicitVRLittleEndian])], app=b"1.2.3.999"))
    kind, body = peer.pdu()
    assert (kind, body[1], body[2], body[3]) == (0x03, 0x01, 0x01, 0x02)
    peer.close()


def test_data_before_association_is_aborted(scp: StorageSCP) -> None:
    peer = RawPeer(scp.port)
    peer.send(p_data(1, 0x03, b"\x00" * 8))
    assert _abort_reason(peer) == (0x02, 0x02)  # service provider, unexpected PDU
    assert peer.closed()
    assert _echo_ok(scp.port)


def test_silent_connection_is_closed_after_the_artim_timeout(tmp_path: Path) -> None:
    with own_scp(tmp_path, ScpTimeouts(acse=1.0, dimse=10, network=10)) as server:
        peer = RawPeer(server.port)
        started = time.monotonic()
        kind, _ = peer.pdu()  # acse=1 s: the acceptor gives up and aborts
        assert kind == 0x07
        assert peer.closed()
        assert time.monotonic() - started < 8
        assert _echo_ok(server.port)


def test_negotiation_answers_each_context(scp: StorageSCP) -> None:
    peer = RawPeer(scp.port)
    body = peer.associate([
        (1, CTImageStorage, [ImplicitVRLittleEndian, ExplicitVRLittleEndian]),
        (3, CTImageStorage, [JPEGBaseline8Bit, RLELossless]),
        (5, "1.2.3.4.5.6.7.8", [ImplicitVRLittleEndian]),
        (7, CTImageStorage, ["1.2.3.4.999"]),
    ])
    answers: dict[int, tuple[int, str]] = {}
    offset = 68
    while offset < len(body):
        kind, _, length = struct.unpack_from(">BBH", body, offset)
        value = body[offset + 4:offset + 4 + length]
        if kind == 0x21:
            syntax = value[8:].decode() if value[2] == 0 else ""
            answers[value[0]] = (value[2], syntax)
        offset += 4 + length
    assert answers == {
        1: (0, ExplicitVRLittleEndian),  # ours first: explicit before implicit
        3: (0, RLELossless),  # lossless before lossy
        5: (3, ""),  # abstract syntax not supported
        7: (4, ""),  # transfer syntaxes not supported
    }
    assert body[4:68] == associate_rq([])[10:74]  # titles and reserved field echoed
    peer.close()


def test_role_selection_for_storage_commitment(scp: StorageSCP) -> None:
    ae = AE(ae_title="PACS")
    ae.add_requested_context(STORAGE_COMMITMENT_PUSH, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title=SCP_AE,
                         ext_neg=[build_role(STORAGE_COMMITMENT_PUSH, scp_role=True)])
    try:
        assert assoc.is_established
        (cx,) = assoc.accepted_contexts
        assert cx.as_scp  # the requestor (the PACS) may act as the commitment SCP
    finally:
        assoc.release()


# -- data transfer --------------------------------------------------------------------------------------


def test_pdv_on_a_context_not_accepted_is_aborted(scp: StorageSCP) -> None:
    peer = RawPeer(scp.port)
    peer.associate([(1, VERIFICATION, [ImplicitVRLittleEndian])])
    peer.send(p_data(3, 0x03, b"\x00" * 8))
    assert _abort_reason(peer) == (0x02, 0x06)  # invalid PDU parameter value
    assert _echo_ok(scp.port)


def test_unknown_pdu_type_is_aborted(scp: StorageSCP) -> None:
    peer = RawPeer(scp.port)
    peer.associate([(1, VERIFICATION, [ImplicitVRLittleEndian])])
    peer.send(struct.pack(">BBL", 0x09, 0, 4) + b"\x00" * 4)
    assert _abort_reason(peer) == (0x02, 0x01)  # unrecognized PDU


def test_pdu_over_the_negotiated_maximum_is_aborted(scp: StorageSCP) -> None:
    peer = RawPeer(scp.port)
    peer.associate([(1, VERIFICATION, [ImplicitVRLittleEndian])])
    peer.send(p_data(1, 0x00, b"\x00" * 20000))  # max_pdu=16384
    assert _abort_reason(peer) == (0x02, 0x06)


def test_echo_and_release_over_raw_pdus(scp: StorageSCP) -> None:
    peer = RawPeer(scp.port)
    peer.associate([(1, VERIFICATION, [ImplicitVRLittleEndian])])
    rq = command((0x0002, "UI", VERIFICATION), (0x0100, "US", 0x0030), (0x0110, "US", 7), (0x0800, "US", 0x0101))
    # The command set in three fragments, the first two in one PDU.
    first, second, third = rq[:10], rq[10:20], rq[20:]
    pdu = p_data(1, 0x01, first)
    extra = struct.pack(">LBB", len(second) + 2, 1, 0x01) + second
    pdu = struct.pack(">BBL", 0x04, 0, len(pdu) - 6 + len(extra)) + pdu[6:] + extra
    peer.send(pdu)
    peer.send(p_data(1, 0x03, third))
    kind, body = peer.pdu()
    assert kind == 0x04 and body[5] == 0x03  # a command, last fragment
    rsp = parse_command(body[6:])
    assert (rsp.us(0x0100), rsp.us(0x0120), rsp.us(0x0900)) == (0x8030, 7, 0)
    peer.send(struct.pack(">BBL", 0x05, 0, 4) + b"\x00" * 4)
    kind, _ = peer.pdu()
    assert kind == 0x06  # A-RELEASE-RP
    assert peer.closed()
    deadline = time.monotonic() + 10
    while scp.active_associations and time.monotonic() < deadline:
        time.sleep(0.01)
    assert scp.active_associations == 0


def test_unsupported_command_gets_unrecognised_operation(scp: StorageSCP) -> None:
    peer = RawPeer(scp.port)
    peer.associate([(1, CTImageStorage, [ImplicitVRLittleEndian])])
    rq = command((0x0002, "UI", CTImageStorage), (0x0100, "US", 0x0020), (0x0110, "US", 3), (0x0800, "US", 0x0101))
    peer.send(p_data(1, 0x03, rq))  # a C-FIND-RQ on a storage context
    kind, body = peer.pdu()
    assert kind == 0x04
    rsp = parse_command(body[6:])
    assert (rsp.us(0x0100), rsp.us(0x0120), rsp.us(0x0900)) == (0x8020, 3, 0x0211)
    peer.close()


def test_fragmented_store_small_pdus_is_stored_byte_identical(tmp_path: Path) -> None:
    """max PDU 4096: every data set arrives in ~130 PDUs; both directions fragment."""
    settings = DicomSettings(ae_title=SCP_AE, host="127.0.0.1", max_pdu=4096).model_copy(update={"port": 0})
    sink = RecordingSink()
    spool = Spool(tmp_path / "spool", fsync=False)
    with StorageSCP(settings, spool, sink, ScpTimeouts(5, 5, 5)) as server:
        ae = AE(ae_title="MODALITY")
        ae.maximum_pdu_size = 4096
        ae.add_requested_context(CTImageStorage, ExplicitVRBigEndian)
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", server.port, ae_title=SCP_AE)
        assert assoc.is_established
        src = tmp_path / "big-endian.dcm"
        make_ct_dataset(seed=11, size=256, transfer_syntax=ExplicitVRBigEndian).save_as(
            src, enforce_file_format=True, little_endian=False, implicit_vr=False)
        statuses = [assoc.send_c_store(src).Status for _ in range(2)]
        assoc.release()
    assert statuses == [st.SUCCESS, st.SUCCESS]
    (inst,) = {i.path for i in sink.instances}
    assert (spool.root / inst).read_bytes().endswith(dataset_bytes(src))
    assert len(dataset_bytes(src)) > 30 * 4096
    assert sink.instances[1].duplicate


def test_data_set_over_the_limit_is_a700_and_the_association_goes_on(scp: StorageSCP) -> None:
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title=SCP_AE)
    assert assoc.is_established
    try:
        big = make_ct_dataset(seed=12, size=1024)  # 2 MB of pixels; the limit is 1 MiB
        rsp = assoc.send_c_store(big)
        assert rsp.Status == st.OUT_OF_RESOURCES and "larger than" in rsp.ErrorComment
        assert assoc.send_c_store(make_ct_dataset(seed=13)).Status == st.SUCCESS
    finally:
        assoc.release()
    sink = scp.sink
    assert isinstance(sink, RecordingSink) and len(sink.instances) == 1
    from dicom_gateway import metrics

    refused = metrics.REGISTRY.get_sample_value(
        "tamsoat_dicom_instances_received_total",
        {"calling_ae": "MODALITY", "source": "dimse", "outcome": "rejected", "status": "0xA700"})
    assert refused is not None and refused >= 1


def test_malformed_associate_rq_is_aborted(scp: StorageSCP) -> None:
    """A maximum-length item of 2 bytes (PS3.8 D.1 says 4) must not pass as "no limit"."""
    rq = associate_rq([(1, VERIFICATION, [ImplicitVRLittleEndian])])
    bad = rq.replace(_item(0x51, struct.pack(">L", 16384)), _item(0x51, b"\x40\x00"))
    bad = bad[:2] + struct.pack(">L", len(bad) - 6) + bad[6:]
    peer = RawPeer(scp.port)
    peer.send(bad)
    assert _abort_reason(peer) == (0x02, 0x06)
    assert _echo_ok(scp.port)


def test_a_message_left_unfinished_is_aborted_after_the_dimse_timeout(tmp_path: Path) -> None:
    """Between messages the (long) network timeout applies; inside one, the DIMSE timeout."""
    with own_scp(tmp_path, ScpTimeouts(acse=5, dimse=0.5, network=30)) as server:
        peer = RawPeer(server.port)
        peer.associate([(1, VERIFICATION, [ImplicitVRLittleEndian])])
        time.sleep(1.0)  # idle between messages: longer than dimse, still served
        rq = command((0x0002, "UI", VERIFICATION), (0x0100, "US", 0x0030), (0x0110, "US", 1), (0x0800, "US", 0x0101))
        peer.send(p_data(1, 0x01, rq[:10]))  # the first fragment of a command, then nothing
        started = time.monotonic()
        assert _abort_reason(peer)[0] == 0x02
        assert time.monotonic() - started < 10


def test_rejections_of_the_acceptor_are_counted(tmp_path: Path) -> None:
    from dicom_gateway import metrics

    def rejected() -> float:
        return metrics.REGISTRY.get_sample_value(
            "tamsoat_dicom_associations_total", {"calling_ae": "(unlisted)", "result": "rejected"}) or 0.0

    with own_scp(tmp_path, max_associations=1) as server:
        before = rejected()
        first = RawPeer(server.port)
        first.associate([(1, VERIFICATION, [ImplicitVRLittleEndian])])
        second = RawPeer(server.port)
        second.send(associate_rq([(1, VERIFICATION, [ImplicitVRLittleEndian])]))
        kind, body = second.pdu()
        assert (kind, body[1], body[2], body[3]) == (0x03, 0x02, 0x03, 0x02)  # transient, local limit exceeded
        assert rejected() == before + 1
        first.close()
        second.close()


def test_a_flood_of_silent_connections_is_capped(tmp_path: Path) -> None:
    """max_associations=1: at most 2 * 1 + 16 connections get a thread; the rest are closed at once,
    and the SCP serves again as soon as the flood is gone."""
    with own_scp(tmp_path, ScpTimeouts(acse=30, dimse=5, network=5), max_associations=1) as server:
        flood = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(40)]
        try:
            closed = 0
            for s in flood[18:]:
                try:
                    closed += s.recv(1) == b""
                except ConnectionError:
                    closed += 1
            assert closed == len(flood) - 18
        finally:
            for s in flood:
                s.close()
        deadline = time.monotonic() + 10
        while not _echo_ok(server.port):
            assert time.monotonic() < deadline, "the SCP did not recover from the flood"
            time.sleep(0.1)


def test_ipv6_loopback_with_the_allow_list(tmp_path: Path) -> None:
    from dicom_gateway.scu import echo
    from tamsoat.core.settings import AllowedPeer, Destination

    peers = [AllowedPeer(ae_title="MODALITY", host="::1")]
    with own_scp(tmp_path, host="::1", allowed_peers=peers) as server:
        here = Destination(name="self", ae_title=SCP_AE, host="::1", port=server.port)
        assert echo(here, "MODALITY").ok
        refused = echo(here, "STRANGER")
        assert not refused.ok and "Calling AE title not recognised" in refused.message
