"""The SCU: send to DCMTK storescp and to our own SCP; echo; dead and refusing peers."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless

from dicom_gateway.scu import ScuTimeouts, echo, send_files
from tamsoat.core.settings import AllowedPeer, Destination
from tests.dicom_gateway.gateway_helpers import (
    SCP_AE,
    RunningSCP,
    dataset_bytes,
    free_port,
    make_ct_dataset,
    needs_dcmtk,
    start_scp,
    wait_for_port,
)

FAST = ScuTimeouts(connect=2, acse=5, dimse=10, network=10)


class Storescp:
    def __init__(self, directory: Path, *extra: str) -> None:
        self.directory = directory
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["storescp", "-aet", "PACS", "-od", str(directory), "-ta", "10", "-ts", "10", *extra,
             str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            wait_for_port(self.port)
        except TimeoutError:
            self.stop()
            raise

    @property
    def destination(self) -> Destination:
        return Destination(name="pacs", ae_title="PACS", host="127.0.0.1", port=self.port)

    def received(self) -> list[Path]:
        return sorted(p for p in self.directory.iterdir() if p.is_file())

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def storescp_factory(tmp_path: Path) -> Iterator[Callable[..., Storescp]]:
    started: list[Storescp] = []

    def start(*extra: str) -> Storescp:
        out = tmp_path / f"pacs{len(started)}"
        out.mkdir()
        server = Storescp(out, *extra)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@needs_dcmtk
def test_send_files_to_storescp(storescp_factory: Callable[..., Storescp], ct_factory: Callable[..., Path]) -> None:
    pacs = storescp_factory()
    files = [ct_factory() for _ in range(3)]
    results = send_files(pacs.destination, files, "TAMSOAT", timeouts=FAST)
    assert [r.outcome for r in results] == ["success"] * 3
    assert [r.status for r in results] == [0x0000] * 3
    assert [r.path for r in results] == files

    received = {dcmread(p).SOPInstanceUID: p for p in pacs.received()}
    assert len(received) == 3
    for src in files:
        got = received[dcmread(src).SOPInstanceUID]
        assert dataset_bytes(got) == dataset_bytes(src)


@needs_dcmtk
def test_send_mixed_transfer_syntaxes_in_one_association(
    storescp_factory: Callable[..., Storescp], tmp_path: Path
) -> None:
    pacs = storescp_factory("+xa")  # accept every transfer syntax DCMTK knows
    rle = make_ct_dataset(seed=1)
    rle.compress(RLELossless)
    rle.save_as(tmp_path / "rle.dcm", enforce_file_format=True)
    make_ct_dataset(seed=2, transfer_syntax=ImplicitVRLittleEndian).save_as(
        tmp_path / "implicit.dcm", enforce_file_format=True
    )
    files = [tmp_path / "rle.dcm", tmp_path / "implicit.dcm"]
    results = send_files(pacs.destination, files, "TAMSOAT", timeouts=FAST)
    assert [r.outcome for r in results] == ["success", "success"]
    by_uid = {dcmread(p).SOPInstanceUID: p for p in pacs.received()}
    for src in files:
        got = by_uid[dcmread(src).SOPInstanceUID]
        assert dcmread(got).file_meta.TransferSyntaxUID == dcmread(src).file_meta.TransferSyntaxUID
        assert dataset_bytes(got) == dataset_bytes(src)


@needs_dcmtk
def test_explicit_file_converted_when_peer_takes_implicit_only(
    storescp_factory: Callable[..., Storescp], ct_factory: Callable[..., Path]
) -> None:
    pacs = storescp_factory("+xi")
    src = ct_factory()
    (result,) = send_files(pacs.destination, [src], "TAMSOAT", timeouts=FAST)
    assert result.outcome == "success", result.message
    (got,) = pacs.received()
    ds = dcmread(got)
    assert ds.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    assert (ds.pixel_array == dcmread(src).pixel_array).all()


@needs_dcmtk
def test_echo_storescp(storescp_factory: Callable[..., Storescp]) -> None:
    result = echo(storescp_factory().destination, "TAMSOAT", timeouts=FAST)
    assert result.ok and result.status == 0x0000


def test_destination_down_is_retry_quickly(ct_factory: Callable[..., Path]) -> None:
    down = Destination(name="down", ae_title="PACS", host="127.0.0.1", port=free_port())
    files = [ct_factory(), ct_factory()]
    started = time.monotonic()
    results = send_files(down, files, "TAMSOAT", timeouts=FAST)
    assert time.monotonic() - started < 5
    assert [(r.outcome, r.status) for r in results] == [("retry", None), ("retry", None)]
    assert all("associate" in r.message for r in results)
    echo_result = echo(down, "TAMSOAT", timeouts=FAST)
    assert not echo_result.ok


def test_silent_peer_times_out_as_retry(ct_factory: Callable[..., Path]) -> None:
    """A peer that accepts TCP but never answers the A-ASSOCIATE-RQ must not hang the sender."""
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        dest = Destination(name="mute", ae_title="PACS", host="127.0.0.1", port=port)
        started = time.monotonic()
        quick = ScuTimeouts(connect=1, acse=1, dimse=1, network=1)
        results = send_files(dest, [ct_factory()], "TAMSOAT", timeouts=quick)
        assert time.monotonic() - started < 5
    assert results[0].outcome == "retry"


def test_send_to_our_scp_and_outcomes(tmp_path: Path, ct_factory: Callable[..., Path]) -> None:
    server: RunningSCP = start_scp(tmp_path)
    try:
        dest = Destination(name="self", ae_title=SCP_AE, host="127.0.0.1", port=server.port)
        assert echo(dest, "MODALITY", timeouts=FAST).ok
        good = ct_factory()
        missing = tmp_path / "missing.dcm"
        not_dicom = tmp_path / "not.dcm"
        not_dicom.write_bytes(b"hello")
        results = send_files(dest, [good, missing, not_dicom, good], "MODALITY", timeouts=FAST)
        assert [r.outcome for r in results] == ["success", "dead", "dead", "success"]
        assert [i.duplicate for i in server.sink.instances] == [False, True]

        server.sink.error = RuntimeError("boom")
        (failed,) = send_files(dest, [ct_factory()], "MODALITY", timeouts=FAST)
        assert (failed.outcome, failed.status) == ("dead", 0xC001)
    finally:
        server.scp.stop(grace_s=1)


def test_rejected_association_is_retry(tmp_path: Path, ct_factory: Callable[..., Path]) -> None:
    server = start_scp(tmp_path, allowed_peers=[AllowedPeer(ae_title="MODALITY", host="127.0.0.1")])
    try:
        dest = Destination(name="self", ae_title=SCP_AE, host="127.0.0.1", port=server.port)
        (result,) = send_files(dest, [ct_factory()], "STRANGER", timeouts=FAST)
        assert (result.outcome, result.status) == ("retry", None)
        assert "rejected" in result.message and "Calling AE" in result.message
        rejected_echo = echo(dest, "STRANGER", timeouts=FAST)
        assert not rejected_echo.ok and "rejected" in rejected_echo.message
    finally:
        server.scp.stop(grace_s=1)


def test_empty_send_is_a_no_op() -> None:
    dest = Destination(name="x", ae_title="PACS", host="127.0.0.1", port=free_port())
    assert send_files(dest, [], "TAMSOAT") == []


def test_results_keep_input_order_with_explicit_le(ct_factory: Callable[..., Path], tmp_path: Path) -> None:
    server = start_scp(tmp_path)
    try:
        dest = Destination(name="self", ae_title=SCP_AE, host="127.0.0.1", port=server.port)
        files = [ct_factory() for _ in range(4)]
        results = send_files(dest, files, "MODALITY", timeouts=FAST)
        assert [r.path for r in results] == files
        assert {i.transfer_syntax_uid for i in server.sink.instances} == {ExplicitVRLittleEndian}
    finally:
        server.scp.stop(grace_s=1)


def test_more_than_128_contexts_are_split_into_several_associations() -> None:
    from dicom_gateway.scu import MAX_CONTEXTS, _batches, _File

    files = [
        _File(i, Path(f"f{i}.dcm"), f"1.2.3.{i % 150}", f"1.2.4.{i}", RLELossless if i % 2 else ExplicitVRLittleEndian,
              dataset_offset=200)
        for i in range(300)
    ]
    batches = _batches(files)
    assert len(batches) > 1
    seen = []
    for contexts, members in batches:
        assert len(contexts) <= MAX_CONTEXTS
        assert len(set(contexts)) == len(contexts)
        for f in members:
            assert f.key in contexts
        seen += [f.index for f in members]
    assert sorted(seen) == list(range(300))
