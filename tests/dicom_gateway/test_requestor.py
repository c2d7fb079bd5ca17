"""Our association requestor (dicom_gateway.requestor) and the SCU built on it (dicom_gateway.scu),
against real peers: our own StorageSCP, a pynetdicom SCP, DCMTK's storescp, and raw-socket fake
acceptors that reject, abort, stay silent or answer garbage."""

from __future__ import annotations

import contextlib
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)
from pynetdicom import AE, evt
from pynetdicom.dimse_primitives import C_STORE

from dicom_gateway import upper_layer as ul
from dicom_gateway.acceptor import Association, Presentation
from dicom_gateway.command_set import Command
from dicom_gateway.requestor import AssociationError, Rejected, Requestor, RequestorTimeouts
from dicom_gateway.scp import ScpTimeouts, StorageSCP
from dicom_gateway.scu import ScuTimeouts, echo, send_files
from dicom_gateway.spool import Spool
from tamsoat.core.settings import AllowedPeer, Destination, DicomSettings
from tests.dicom_gateway.gateway_helpers import (
    SCP_AE,
    RecordingSink,
    dataset_bytes,
    encode_le,
    free_port,
    make_ct_dataset,
    needs_dcmtk,
    wait_for_port,
    write_ct,
)

VERIFICATION = "1.2.840.10008.1.1"
# Generous: the machine running the tests may be loaded.
TIMEOUTS = ScuTimeouts(connect=5, acse=15, dimse=30, network=30)
REQUESTOR_TIMEOUTS = RequestorTimeouts(connect=5, acse=15, dimse=30)
MESSAGE_ID, MESSAGE_ID_RESPONDED_TO, COMMAND_FIELD, STATUS = 0x0110, 0x0120, 0x0100, 0x0900


# -- our SCP, recording the message IDs it is sent ------------------------------------------------------


class RecordingSCP(StorageSCP):
    """Our StorageSCP, unchanged, noting the Message ID of every C-STORE-RQ."""

    def __init__(self, settings: DicomSettings, spool: Spool, sink: RecordingSink, timeouts: ScpTimeouts) -> None:
        super().__init__(settings, spool, sink, timeouts)
        self.message_ids: list[int | None] = []

    def c_store(self, assoc: Association, context: Presentation, cmd: Command,
                data: Sequence[memoryview] | None, size: int) -> tuple[int, str | None]:
        self.message_ids.append(cmd.us(MESSAGE_ID))
        return super().c_store(assoc, context, cmd, data, size)


@contextlib.contextmanager
def our_scp(tmp_path: Path, **settings: object) -> Iterator[RecordingSCP]:
    config = DicomSettings(ae_title=SCP_AE, host="127.0.0.1", **settings).model_copy(  # type: ignore[arg-type]
        update={"port": 0})
    server = RecordingSCP(config, Spool(tmp_path / "spool", fsync=False), RecordingSink(),
                          ScpTimeouts(acse=15, dimse=30, network=30))
    server.start()
    try:
        yield server
    finally:
        server.stop(grace_s=2)


def destination(port: int, ae_title: str = SCP_AE) -> Destination:
    return Destination(name="peer", ae_title=ae_title, host="127.0.0.1", port=port)


def recorded(server: StorageSCP) -> RecordingSink:
    assert isinstance(server.sink, RecordingSink)
    return server.sink


def wait_until_idle(server: StorageSCP, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while server.active_associations and time.monotonic() < deadline:
        time.sleep(0.02)
    return server.active_associations


def save(ds: Dataset, path: Path, **kwargs: bool) -> Path:
    ds.save_as(path, enforce_file_format=True, **kwargs)
    return path


# -- sending to our SCP ----------------------------------------------------------------------------------


def test_send_files_fragmented_arrive_byte_identical(tmp_path: Path) -> None:
    """max PDU 4096 on the SCP: every data set goes in several P-DATA-TF PDUs (the acceptor aborts
    one over its maximum); each file keeps its transfer syntax and its exact data set bytes."""
    src = tmp_path / "src"
    src.mkdir()
    files = [write_ct(src / f"explicit{i}.dcm", seed=i, size=64) for i in range(3)]
    files.append(write_ct(src / "implicit.dcm", seed=10, size=64, transfer_syntax=ImplicitVRLittleEndian))
    files.append(save(make_ct_dataset(seed=11, size=64, transfer_syntax=ExplicitVRBigEndian), src / "be.dcm",
                      little_endian=False, implicit_vr=False))
    rle = make_ct_dataset(seed=12, size=64)
    rle.compress(RLELossless)
    files.append(save(rle, src / "rle.dcm"))
    syntaxes = [dcmread(f).file_meta.TransferSyntaxUID for f in files]
    assert syntaxes == [ExplicitVRLittleEndian] * 3 + [ImplicitVRLittleEndian, ExplicitVRBigEndian, RLELossless]
    assert all(len(dataset_bytes(f)) > 2 * 4096 for f in files[:5])

    with our_scp(tmp_path, max_pdu=4096) as server:
        results = send_files(destination(server.port), files, "MODALITY", timeouts=TIMEOUTS)
        assert [(r.path, r.status, r.outcome) for r in results] == [(f, 0x0000, "success") for f in files], results
        assert server.message_ids == [1, 2, 3, 4, 5, 6]  # one association, IDs in sending order
        instances = recorded(server).instances
        assert [i.sop_instance_uid for i in instances] == [dcmread(f).SOPInstanceUID for f in files]
        for f, syntax, inst in zip(files, syntaxes, instances, strict=True):
            assert inst.transfer_syntax_uid == syntax
            assert inst.calling_ae_title == "MODALITY" and inst.called_ae_title == SCP_AE
            assert not inst.duplicate
            spooled = server.spool.path(inst.path)
            assert dataset_bytes(spooled) == dataset_bytes(f)
            assert dcmread(spooled).file_meta.TransferSyntaxUID == syntax
        assert wait_until_idle(server) == 0  # released, not left open


def test_requestor_message_ids_responses_and_release(tmp_path: Path) -> None:
    a, b = write_ct(tmp_path / "a.dcm", seed=1), write_ct(tmp_path / "b.dcm", seed=2)
    with our_scp(tmp_path) as server:
        requestor = Requestor.open(
            "127.0.0.1", server.port, calling_ae_title="MODALITY", called_ae_title=SCP_AE,
            contexts=[(CTImageStorage, ExplicitVRLittleEndian), (VERIFICATION, ImplicitVRLittleEndian),
                      ("1.2.3.4.5.6.7", ImplicitVRLittleEndian)],
            timeouts=REQUESTOR_TIMEOUTS,
        )
        try:
            # Contexts 1, 3, 5; the unknown SOP class is not accepted.
            assert requestor.accepted == {(CTImageStorage, ExplicitVRLittleEndian): 1,
                                          (VERIFICATION, ImplicitVRLittleEndian): 3}
            assert requestor.is_open
            responses = [
                requestor.c_store(1, CTImageStorage, dcmread(a).SOPInstanceUID, dataset_bytes(a)),
                requestor.c_echo(3),
                requestor.c_store(1, CTImageStorage, dcmread(b).SOPInstanceUID, dataset_bytes(b)),
            ]
            assert [(r.us(COMMAND_FIELD), r.us(MESSAGE_ID_RESPONDED_TO), r.us(STATUS)) for r in responses] == [
                (0x8001, 1, 0x0000), (0x8030, 2, 0x0000), (0x8001, 3, 0x0000)]
            assert responses[2].uid(0x1000) == dcmread(b).SOPInstanceUID
        finally:
            requestor.release()
        assert not requestor.is_open
        requestor.release()  # a second release does nothing
        with pytest.raises(AssociationError, match="ended"):
            requestor.c_echo(3)
        assert server.message_ids == [1, 3]
        assert [dataset_bytes(server.spool.path(i.path)) for i in recorded(server).instances] == [
            dataset_bytes(a), dataset_bytes(b)]
        assert wait_until_idle(server) == 0


def test_association_released_after_send_files_and_echo(tmp_path: Path) -> None:
    files = [write_ct(tmp_path / f"{i}.dcm", seed=i) for i in range(2)]
    with our_scp(tmp_path) as server:
        dest = destination(server.port)
        assert [r.outcome for r in send_files(dest, files, "MODALITY", timeouts=TIMEOUTS)] == ["success"] * 2
        assert wait_until_idle(server) == 0
        result = echo(dest, "MODALITY", timeouts=TIMEOUTS)
        assert (result.ok, result.status, result.message) == (True, 0x0000, "success")
        assert wait_until_idle(server) == 0
        # The SCP is still serving: the associations ended cleanly.
        assert send_files(dest, files[:1], "MODALITY", timeouts=TIMEOUTS)[0].outcome == "success"
        assert recorded(server).instances[-1].duplicate
        assert wait_until_idle(server) == 0


# -- conversion for a peer that takes the other little-endian syntax only ----------------------------------


@pytest.mark.parametrize(
    ("file_syntax", "peer_syntax"),
    [(ExplicitVRLittleEndian, ImplicitVRLittleEndian), (ImplicitVRLittleEndian, ExplicitVRLittleEndian)],
    ids=["explicit-to-implicit", "implicit-to-explicit"],
)
def test_file_converted_for_a_pynetdicom_scp_with_one_syntax(tmp_path: Path, file_syntax: str,
                                                             peer_syntax: str) -> None:
    received: list[tuple[str, int, bytes, Dataset]] = []

    def on_store(event: evt.Event) -> int:
        request = event.request
        assert isinstance(request, C_STORE) and request.DataSet is not None
        raw = request.DataSet.getvalue()  # the data set bytes as they came
        received.append((str(event.context.transfer_syntax), int(event.message_id), raw, event.dataset))
        return 0x0000

    ae = AE(ae_title="PACS")
    ae.add_supported_context(CTImageStorage, peer_syntax)
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert server is not None
    try:
        port = int(server.server_address[1])
        sources = [write_ct(tmp_path / f"src{i}.dcm", seed=i, transfer_syntax=file_syntax) for i in range(2)]
        results = send_files(destination(port, "PACS"), sources, "TAMSOAT", timeouts=TIMEOUTS)
        assert [(r.outcome, r.status) for r in results] == [("success", 0x0000)] * 2, results
    finally:
        server.shutdown()
    assert [(ts, mid) for ts, mid, _, _ in received] == [(peer_syntax, 1), (peer_syntax, 2)]
    for src, (_, _, raw, ds) in zip(sources, received, strict=True):
        original = dcmread(src)
        assert original.file_meta.TransferSyntaxUID == file_syntax
        # pydicom's reader also takes explicit VR bytes on an implicit context (and the reverse),
        # so the bytes are compared: exactly pydicom's encoding of the source in the peer's syntax.
        assert raw == encode_le(original, implicit=peer_syntax == ImplicitVRLittleEndian)
        assert raw != dataset_bytes(src)
        assert ds.SOPInstanceUID == original.SOPInstanceUID
        assert ds.PixelData == original.PixelData
        assert ds.PatientName == original.PatientName  # UTF-8 text survives the re-encoding
        assert ds == original  # every element


# -- rejections by our SCP -----------------------------------------------------------------------------


def test_unknown_calling_ae_is_rejected(tmp_path: Path) -> None:
    with our_scp(tmp_path, allowed_peers=[AllowedPeer(ae_title="MODALITY", host="127.0.0.1")]) as server:
        with pytest.raises(Rejected) as caught:
            Requestor.open("127.0.0.1", server.port, calling_ae_title="STRANGER", called_ae_title=SCP_AE,
                           contexts=[(VERIFICATION, ImplicitVRLittleEndian)], timeouts=REQUESTOR_TIMEOUTS)
        assert (caught.value.result, caught.value.source, caught.value.reason) == (1, 1, 3)
        message = str(caught.value)
        assert "Calling AE title not recognised" in message
        assert "Rejected Permanent" in message and "Service User" in message
        # The listed peer is accepted by the same SCP.
        with Requestor.open("127.0.0.1", server.port, calling_ae_title="MODALITY", called_ae_title=SCP_AE,
                            contexts=[(VERIFICATION, ImplicitVRLittleEndian)],
                            timeouts=REQUESTOR_TIMEOUTS) as requestor:
            assert requestor.c_echo(1).us(STATUS) == 0x0000
        assert wait_until_idle(server) == 0


def test_unknown_called_ae_is_rejected(tmp_path: Path) -> None:
    with our_scp(tmp_path, allowed_peers=[AllowedPeer(ae_title="MODALITY", host="127.0.0.1")]) as server:
        with pytest.raises(Rejected) as caught:
            Requestor.open("127.0.0.1", server.port, calling_ae_title="MODALITY", called_ae_title="NOBODY",
                           contexts=[(VERIFICATION, ImplicitVRLittleEndian)], timeouts=REQUESTOR_TIMEOUTS)
        assert (caught.value.result, caught.value.source, caught.value.reason) == (1, 1, 7)
        assert "Called AE title not recognised" in str(caught.value)
        assert wait_until_idle(server) == 0


def test_rejected_send_files_is_retry_for_every_file(tmp_path: Path) -> None:
    files = [write_ct(tmp_path / f"{i}.dcm", seed=i) for i in range(3)]
    with our_scp(tmp_path, allowed_peers=[AllowedPeer(ae_title="MODALITY", host="127.0.0.1")]) as server:
        results = send_files(destination(server.port), files, "STRANGER", timeouts=TIMEOUTS)
        assert [(r.path, r.status, r.outcome) for r in results] == [(f, None, "retry") for f in files]
        for r in results:
            assert "rejected" in r.message and "Calling AE title not recognised" in r.message
        wrong_called = send_files(destination(server.port, "NOBODY"), files, "MODALITY", timeouts=TIMEOUTS)
        assert [r.outcome for r in wrong_called] == ["retry"] * 3
        assert all("Called AE title not recognised" in r.message for r in wrong_called)
        rejected_echo = echo(destination(server.port), "STRANGER", timeouts=TIMEOUTS)
        assert not rejected_echo.ok and "Calling AE title not recognised" in rejected_echo.message
        assert recorded(server).instances == [] and server.message_ids == []


# -- raw-socket fake acceptors ----------------------------------------------------------------------------


def _recv_exactly(conn: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("the requestor closed the connection")
        buf += chunk
    return bytes(buf)


def _read_pdu(conn: socket.socket) -> tuple[int, bytes]:
    kind, _, length = struct.unpack(">BBL", _recv_exactly(conn, 6))
    return kind, _recv_exactly(conn, length)


def _pdvs(body: bytes) -> list[tuple[int, int, bytes]]:
    """(context ID, message control header, data) of each PDV of a P-DATA-TF body."""
    out, offset = [], 0
    while offset < len(body):
        length, context_id, control = struct.unpack_from(">LBB", body, offset)
        out.append((context_id, control, body[offset + 6:offset + 4 + length]))
        offset += 4 + length
    return out


def _parse_command(raw: bytes) -> dict[int, bytes]:
    out, offset = {}, 0
    while offset < len(raw):
        _, element, length = struct.unpack_from("<HHL", raw, offset)
        out[element] = raw[offset + 8:offset + 8 + length]
        offset += 8 + length
    return out


def _command(*elements: tuple[int, bytes]) -> bytes:
    body = b"".join(struct.pack("<HHL", 0x0000, element, len(value)) + value for element, value in elements)
    return struct.pack("<HHLL", 0x0000, 0x0000, 4, len(body)) + body


def _us(value: int) -> bytes:
    return struct.pack("<H", value)


def _ui(value: str) -> bytes:
    raw = value.encode()
    return raw + b"\x00" if len(raw) % 2 else raw


def _p_data(context_id: int, control: int, data: bytes) -> bytes:
    pdv = struct.pack(">LBB", len(data) + 2, context_id, control) + data
    return struct.pack(">BBL", 0x04, 0, len(pdv)) + pdv


def _pdu(kind: int, body: bytes) -> bytes:
    return struct.pack(">BBL", kind, 0, len(body)) + body


RELEASE_RP = _pdu(0x06, b"\x00" * 4)


def _associate_ac(rq_body: bytes, *, max_pdu: int = 16384, accept: Callable[[int], bool] = lambda cid: cid == 1,
                  ) -> bytes:
    """Accept the contexts ``accept`` says (with the transfer syntax proposed), refuse the others."""
    rq = ul.parse_associate_rq(rq_body)
    answers = [
        ul.AcceptedContext(cx.id, cx.abstract_syntax, 0, cx.transfer_syntaxes[0]) if accept(cx.id)
        else ul.AcceptedContext(cx.id, cx.abstract_syntax, 4)
        for cx in rq.contexts
    ]
    return ul.associate_ac(rq, answers, max_pdu=max_pdu, implementation_class_uid="1.2.826.0.1.3680043.8.498.99",
                           implementation_version_name="FAKE", roles={})


@dataclass
class Peer:
    """What a fake acceptor saw on one connection."""

    pdus: list[tuple[int, bytes]] = field(default_factory=list)  # after the A-ASSOCIATE-RQ
    requestor_closed: bool = False
    notes: dict[str, object] = field(default_factory=dict)
    done: threading.Event = field(default_factory=threading.Event)  # the script has ended

    def read(self, conn: socket.socket) -> tuple[int, bytes]:
        kind, body = _read_pdu(conn)
        self.pdus.append((kind, body))
        return kind, body

    def drain(self, conn: socket.socket) -> None:
        """Read (and keep) whatever comes until the requestor closes the connection."""
        try:
            while True:
                self.read(conn)
        except ConnectionError:
            self.requestor_closed = True
        except TimeoutError:
            pass


Script = Callable[[socket.socket, Peer], None]


class FakeAcceptor:
    """A listening socket on 127.0.0.1; each connection is handed to ``script`` in a thread."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.peers: list[Peer] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = int(self._listener.getsockname()[1])
        self._thread = threading.Thread(target=self._run, name="fake-acceptor", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            peer = Peer()
            self.peers.append(peer)
            with conn:
                conn.settimeout(20)
                try:
                    self.script(conn, peer)
                except Exception as exc:  # reported by close()
                    self.errors.append(exc)
                finally:
                    peer.done.set()

    @property
    def destination(self) -> Destination:
        return destination(self.port, "FAKE")

    def open(self, timeouts: RequestorTimeouts = REQUESTOR_TIMEOUTS) -> Requestor:
        return Requestor.open("127.0.0.1", self.port, calling_ae_title="TAMSOAT", called_ae_title="FAKE",
                              contexts=[(VERIFICATION, ImplicitVRLittleEndian)], timeouts=timeouts)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        self._listener.close()

    def close(self) -> None:
        """Stop; the script must have ended without an error (its assertions included)."""
        self.stop()
        assert not self._thread.is_alive(), "the fake acceptor's script did not end"
        assert not self.errors, self.errors


@pytest.fixture
def fake() -> Iterator[Callable[[Script], FakeAcceptor]]:
    started: list[FakeAcceptor] = []

    def start(script: Script) -> FakeAcceptor:
        acceptor = FakeAcceptor(script)
        started.append(acceptor)
        return acceptor

    try:
        yield start
    finally:
        for acceptor in started:
            acceptor.stop()


@pytest.fixture
def three_files(tmp_path: Path) -> list[Path]:
    return [write_ct(tmp_path / f"f{i}.dcm", seed=i) for i in range(3)]


def _accept(conn: socket.socket, peer: Peer, **kwargs: object) -> None:
    kind, body = _read_pdu(conn)
    assert kind == 0x01, f"expected A-ASSOCIATE-RQ, got 0x{kind:02X}"
    peer.notes["rq"] = ul.parse_associate_rq(body)
    conn.sendall(_associate_ac(body, **kwargs))  # type: ignore[arg-type]


def test_abort_on_the_first_data_set(fake: Callable[[Script], FakeAcceptor], three_files: list[Path]) -> None:
    def script(conn: socket.socket, peer: Peer) -> None:
        _accept(conn, peer)
        while True:
            kind, body = peer.read(conn)
            if kind == 0x04 and any(not control & 0x01 for _, control, _ in _pdvs(body)):
                break  # the first data set fragment
        peer.notes["before_abort"] = len(peer.pdus)
        conn.sendall(ul.abort_pdu(0x00, 0x00))
        peer.drain(conn)

    acceptor = fake(script)
    started = time.monotonic()
    results = send_files(acceptor.destination, three_files, "TAMSOAT", timeouts=TIMEOUTS)
    assert time.monotonic() - started < 15
    assert [(r.path, r.status, r.outcome) for r in results] == [(f, None, "retry") for f in three_files]
    assert results[0].message.startswith("send failed: "), results[0].message
    assert "abort" in results[0].message
    assert [r.message for r in results[1:]] == ["association ended before sending"] * 2
    acceptor.close()
    (peer,) = acceptor.peers
    # The C-STORE-RQ came first, on context 1; after the A-ABORT the requestor sent nothing and closed.
    kind, body = peer.pdus[0]
    ((context_id, control, raw),) = _pdvs(body)
    cmd = _parse_command(raw)
    assert (kind, context_id, control) == (0x04, 1, 0x03)
    assert (cmd[COMMAND_FIELD], cmd[MESSAGE_ID]) == (_us(0x0001), _us(1))
    assert len(peer.pdus) == peer.notes["before_abort"]
    assert peer.requestor_closed


def test_no_response_in_time_is_retry(fake: Callable[[Script], FakeAcceptor], three_files: list[Path]) -> None:
    def script(conn: socket.socket, peer: Peer) -> None:
        _accept(conn, peer)
        peer.drain(conn)  # read everything, answer nothing

    acceptor = fake(script)
    quick = ScuTimeouts(connect=5, acse=10, dimse=1, network=10)
    started = time.monotonic()
    results = send_files(acceptor.destination, three_files[:2], "TAMSOAT", timeouts=quick)
    elapsed = time.monotonic() - started
    assert 0.9 < elapsed < 15
    assert [(r.status, r.outcome) for r in results] == [(None, "retry"), (None, "retry")]
    assert "no response in time" in results[0].message, results[0].message
    assert results[1].message == "association ended before sending"
    acceptor.close()
    (peer,) = acceptor.peers
    assert peer.requestor_closed
    commands = [_parse_command(raw) for kind, body in peer.pdus if kind == 0x04
                for _, control, raw in _pdvs(body) if control & 0x01]
    assert len(commands) == 1  # the second file was not sent on the dead association
    assert peer.pdus[-1][0] == 0x07  # it gave up with an A-ABORT before closing


def test_transient_rejection(fake: Callable[[Script], FakeAcceptor], three_files: list[Path]) -> None:
    def script(conn: socket.socket, peer: Peer) -> None:
        kind, _ = _read_pdu(conn)
        assert kind == 0x01
        conn.sendall(ul.associate_rj(2, 3, 2))
        peer.drain(conn)

    acceptor = fake(script)
    with pytest.raises(Rejected) as caught:
        acceptor.open()
    assert (caught.value.result, caught.value.source, caught.value.reason) == (2, 3, 2)
    assert "Rejected Transient" in str(caught.value)
    assert "Local limit exceeded" in str(caught.value)
    results = send_files(acceptor.destination, three_files, "TAMSOAT", timeouts=TIMEOUTS)
    assert [r.outcome for r in results] == ["retry"] * 3
    assert all("Rejected Transient" in r.message and "Local limit exceeded" in r.message for r in results)
    acceptor.close()
    assert len(acceptor.peers) == 2
    assert all(p.requestor_closed and p.pdus == [] for p in acceptor.peers)  # closed, nothing more sent


def test_connection_closed_right_after_accept(fake: Callable[[Script], FakeAcceptor],
                                              three_files: list[Path]) -> None:
    acceptor = fake(lambda conn, peer: None)  # the connection is closed as the script returns
    started = time.monotonic()
    with pytest.raises(AssociationError) as caught:
        acceptor.open()
    assert not isinstance(caught.value, Rejected)
    assert str(caught.value).startswith("could not associate"), str(caught.value)
    results = send_files(acceptor.destination, three_files, "TAMSOAT", timeouts=TIMEOUTS)
    assert [r.outcome for r in results] == ["retry"] * 3
    assert all(r.message.startswith("could not associate") for r in results)
    assert not echo(acceptor.destination, "TAMSOAT", timeouts=TIMEOUTS).ok
    assert time.monotonic() - started < 15


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (_pdu(0x09, b"\x00" * 4), "unexpected PDU 0x09"),
        (_pdu(0x07, b"\x00\x00\x02\x00"), "aborted"),  # A-ABORT instead of an answer
        (_pdu(0x02, b"\x00" * 10), "AC shorter"),  # an A-ASSOCIATE-AC too short for its fixed fields
        (struct.pack(">BBL", 0x02, 0, 64 << 20), "over the limit"),  # announces 64 MiB
    ],
    ids=["unknown-type", "abort", "short-ac", "huge-ac"],
)
def test_garbage_answer_to_the_associate_rq(fake: Callable[[Script], FakeAcceptor], answer: bytes,
                                            expected: str) -> None:
    def script(conn: socket.socket, peer: Peer) -> None:
        kind, _ = _read_pdu(conn)
        assert kind == 0x01
        conn.sendall(answer)
        peer.drain(conn)

    acceptor = fake(script)
    started = time.monotonic()
    with pytest.raises(AssociationError) as caught:
        acceptor.open()
    assert time.monotonic() - started < 15
    assert not isinstance(caught.value, Rejected)
    assert expected in str(caught.value), str(caught.value)
    acceptor.close()
    assert acceptor.peers[0].requestor_closed


def test_small_peer_pdu_stale_and_fragmented_responses(fake: Callable[[Script], FakeAcceptor],
                                                       three_files: list[Path]) -> None:
    """The acceptor takes PDUs of at most 256 bytes; it answers each C-STORE first with a response to
    another message (ignored), then with the real one in two fragments in two PDUs."""
    max_pdu = 256

    def script(conn: socket.socket, peer: Peer) -> None:
        _accept(conn, peer, max_pdu=max_pdu)
        stored: list[tuple[dict[int, bytes], bytes]] = []
        peer.notes["stored"] = stored
        command_parts: list[bytes] = []
        data_parts: list[bytes] = []
        cmd: dict[int, bytes] = {}
        while True:
            kind, body = peer.read(conn)
            if kind == 0x05:
                conn.sendall(RELEASE_RP)
                peer.drain(conn)
                return
            assert kind == 0x04 and len(body) <= max_pdu, (kind, len(body))
            for _, control, value in _pdvs(body):
                (command_parts if control & 0x01 else data_parts).append(value)
                if control & 0x03 == 0x03:
                    cmd = _parse_command(b"".join(command_parts))
                    command_parts = []
                elif control & 0x03 == 0x02:
                    stored.append((cmd, b"".join(data_parts)))
                    data_parts = []
                    stale = _command((0x0100, _us(0x8001)), (0x0120, _us(0x7777)), (0x0800, _us(0x0101)),
                                     (0x0900, _us(0xC000)))
                    conn.sendall(_p_data(1, 0x03, stale))
                    real = _command((0x0002, cmd[0x0002]), (0x0100, _us(0x8001)), (0x0120, cmd[MESSAGE_ID]),
                                    (0x0800, _us(0x0101)), (0x0900, _us(0xB000)), (0x1000, cmd[0x1000]))
                    conn.sendall(_p_data(1, 0x01, real[:20]) + _p_data(1, 0x03, real[20:]))

    acceptor = fake(script)
    results = send_files(acceptor.destination, three_files, "TAMSOAT", timeouts=TIMEOUTS)
    assert [(r.status, r.outcome) for r in results] == [(0xB000, "success")] * 3, results
    assert all("warning" in r.message for r in results)
    acceptor.close()
    (peer,) = acceptor.peers
    assert peer.pdus[-1][0] == 0x05 and peer.requestor_closed  # A-RELEASE-RQ, then closed
    stored = peer.notes["stored"]
    assert isinstance(stored, list)
    assert [cmd[MESSAGE_ID] for cmd, _ in stored] == [_us(1), _us(2), _us(3)]
    for src, (cmd, data) in zip(three_files, stored, strict=True):
        assert data == dataset_bytes(src)
        assert cmd[0x1000] == _ui(dcmread(src).SOPInstanceUID)
        assert cmd[0x0002] == _ui(CTImageStorage)
        assert cmd[0x0800] != _us(0x0101)  # a data set follows
    rq = acceptor.peers[0].notes.get("rq")
    assert isinstance(rq, ul.AssociateRequest)
    assert (rq.calling_ae_title, rq.called_ae_title) == ("TAMSOAT", "FAKE")
    assert [(cx.id, cx.abstract_syntax, cx.transfer_syntaxes) for cx in rq.contexts] == [
        (1, CTImageStorage, (ExplicitVRLittleEndian,)), (3, CTImageStorage, (ImplicitVRLittleEndian,))]


def test_echo_when_verification_is_not_accepted(fake: Callable[[Script], FakeAcceptor]) -> None:
    def script(conn: socket.socket, peer: Peer) -> None:
        _accept(conn, peer, accept=lambda cid: False)
        kind, _ = peer.read(conn)
        if kind == 0x05:
            conn.sendall(RELEASE_RP)
        peer.drain(conn)

    acceptor = fake(script)
    result = echo(acceptor.destination, "TAMSOAT", timeouts=TIMEOUTS)
    assert (result.ok, result.status) == (False, None)
    assert "does not accept Verification" in result.message
    acceptor.close()
    (peer,) = acceptor.peers
    assert [kind for kind, _ in peer.pdus] == [0x05]  # released, no C-ECHO sent
    assert peer.requestor_closed


@pytest.mark.parametrize("ending", ["release", "peer-abort", "abort"])
def test_requestor_closes_the_connection_when_the_association_ends(
    fake: Callable[[Script], FakeAcceptor], ending: str
) -> None:
    """The transport is closed by the requestor itself (checked while the Requestor object is still
    referenced, so garbage collection cannot close it for it)."""

    def script(conn: socket.socket, peer: Peer) -> None:
        _accept(conn, peer)
        _, body = peer.read(conn)
        ((context_id, _, raw),) = _pdvs(body)
        cmd = _parse_command(raw)
        if ending == "peer-abort":
            conn.sendall(ul.abort_pdu(0x00, 0x00))
        else:
            conn.sendall(_p_data(context_id, 0x03, _command(
                (0x0002, _ui(VERIFICATION)), (0x0100, _us(0x8030)), (0x0120, cmd[MESSAGE_ID]), (0x0800, _us(0x0101)),
                (0x0900, _us(0x0000)))))
            kind, _ = peer.read(conn)
            if kind == 0x05:
                conn.sendall(RELEASE_RP)
        conn.settimeout(10)
        peer.drain(conn)

    acceptor = fake(script)
    requestor = acceptor.open()
    try:
        if ending == "peer-abort":
            with pytest.raises(AssociationError, match="aborted"):
                requestor.c_echo(1)
        else:
            rsp = requestor.c_echo(1)
            assert (rsp.us(COMMAND_FIELD), rsp.us(MESSAGE_ID_RESPONDED_TO), rsp.us(STATUS)) == (0x8030, 1, 0x0000)
            if ending == "release":
                requestor.release()
            else:
                requestor.abort()
        assert not requestor.is_open
        (peer,) = acceptor.peers
        assert peer.done.wait(30)
        assert peer.requestor_closed
        expected = {"release": [0x04, 0x05], "peer-abort": [0x04], "abort": [0x04, 0x07]}[ending]
        assert [kind for kind, _ in peer.pdus] == expected
        if ending == "abort":
            assert peer.pdus[-1][1][2] == 0x00  # source: service user
        with pytest.raises(AssociationError):
            requestor.c_echo(1)
    finally:
        requestor.abort()  # nothing more once ended
    acceptor.close()


# -- nobody there ------------------------------------------------------------------------------------------


def test_nothing_listening(three_files: list[Path]) -> None:
    dest = destination(free_port(), "PACS")
    started = time.monotonic()
    results = send_files(dest, three_files, "TAMSOAT", timeouts=TIMEOUTS)
    assert [(r.path, r.status, r.outcome) for r in results] == [(f, None, "retry") for f in three_files]
    assert all("could not associate" in r.message for r in results), results
    result = echo(dest, "TAMSOAT", timeouts=TIMEOUTS)
    assert not result.ok and result.status is None
    assert "could not associate" in result.message
    with pytest.raises(AssociationError, match="could not associate"):
        Requestor.open("127.0.0.1", dest.port, calling_ae_title="TAMSOAT", called_ae_title="PACS",
                       contexts=[(VERIFICATION, ImplicitVRLittleEndian)], timeouts=REQUESTOR_TIMEOUTS)
    assert time.monotonic() - started < 15


def test_contexts_are_bounded() -> None:
    too_many: list[tuple[str, str]] = [(VERIFICATION, ImplicitVRLittleEndian)] * 129
    for contexts in ([], too_many):
        with pytest.raises(ValueError, match="1 to 128"):
            Requestor.open("127.0.0.1", 9, calling_ae_title="A", called_ae_title="B", contexts=contexts,
                           timeouts=REQUESTOR_TIMEOUTS)


# -- echo -----------------------------------------------------------------------------------------------------


@needs_dcmtk
def test_echo_dcmtk_storescp(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(["storescp", "-aet", "PACS", "-od", str(tmp_path), "-ta", "15", "-ts", "30", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, timeout=20)
        result = echo(destination(port, "PACS"), "TAMSOAT", timeouts=TIMEOUTS)
        assert (result.ok, result.status, result.message) == (True, 0x0000, "success")
        assert proc.poll() is None  # storescp still serving: we released, not aborted
        again = echo(destination(port, "PACS"), "TAMSOAT", timeouts=TIMEOUTS)
        assert again.ok
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_echo_our_scp(tmp_path: Path) -> None:
    with our_scp(tmp_path) as server:
        result = echo(destination(server.port), "MODALITY", timeouts=TIMEOUTS)
        assert (result.ok, result.status, result.message) == (True, 0x0000, "success")
        assert wait_until_idle(server) == 0


# -- known bugs ------------------------------------------------------------------------------------------------


def test_file_with_a_large_file_meta_is_sent(tmp_path: Path) -> None:
    ds = make_ct_dataset(seed=3)
    ds.file_meta.PrivateInformationCreatorUID = UID("1.2.826.0.1.3680043.8.498.7")
    ds.file_meta.PrivateInformation = b"\x01" * 10_000
    src = save(ds, tmp_path / "big-meta.dcm")
    assert dcmread(src).SOPInstanceUID == ds.SOPInstanceUID  # pydicom reads it
    with our_scp(tmp_path) as server:
        (result,) = send_files(destination(server.port), [src], "MODALITY", timeouts=TIMEOUTS)
        assert (result.status, result.outcome) == (0x0000, "success"), result.message
        (inst,) = recorded(server).instances
        assert dataset_bytes(server.spool.path(inst.path)) == dataset_bytes(src)
