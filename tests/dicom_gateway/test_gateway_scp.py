"""The Storage SCP against real peers: DCMTK echoscu/storescu and raw pynetdicom requestors."""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filereader import read_file_meta_info
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MRImageStorage,
    RLELossless,
    generate_uid,
)
from pynetdicom import AE, _config

import dicom_gateway.spool as spool_mod
from dicom_gateway import status as st
from dicom_gateway.spool import OutOfResourcesError, part10_header
from tamsoat.core.settings import AllowedPeer
from tests.dicom_gateway.gateway_helpers import (
    SCP_AE,
    RunningSCP,
    dataset_bytes,
    encode_le,
    make_ct_dataset,
    needs_dcmtk,
    run_tool,
    start_scp,
)

# -- helpers ---------------------------------------------------------------------------------------


@pytest.fixture
def chunked_send(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Let pynetdicom stream a file's data set bytes as they are (needed to send crafted bytes)."""
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    yield


def crafted_file(
    path: Path, dataset: bytes, *, sop_class: str = CTImageStorage, sop_uid: str | None = None,
    tsyntax: str = ExplicitVRLittleEndian,
) -> Path:
    header = part10_header(
        sop_class_uid=sop_class, sop_instance_uid=sop_uid or generate_uid(), transfer_syntax_uid=tsyntax
    )
    path.write_bytes(header + dataset)
    return path


def pynetdicom_store(port: int, path: Path, calling_ae: str = "MODALITY") -> Dataset:
    """One association, one C-STORE of ``path`` (context from its file meta); returns the status."""
    meta = read_file_meta_info(path)
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title=SCP_AE)
    assert assoc.is_established
    try:
        return assoc.send_c_store(path)
    finally:
        assoc.release()


def echo_ok(port: int, calling_ae: str = "PACS") -> bool:
    result = run_tool("echoscu", "-aec", SCP_AE, "-aet", calling_ae, "-to", "10", "127.0.0.1", str(port))
    return result.returncode == 0


def spooled_dcm(server: RunningSCP) -> list[Path]:
    return sorted(p for p in server.spool.root.rglob("*.dcm"))


# -- C-ECHO and C-STORE from DCMTK -----------------------------------------------------------------


@needs_dcmtk
def test_echoscu_succeeds(running_scp: RunningSCP) -> None:
    assert echo_ok(running_scp.port)


@needs_dcmtk
def test_storescu_files_stored_byte_identical(
    running_scp: RunningSCP, ct_factory: Callable[..., Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    study, series = generate_uid(), generate_uid()
    files = [ct_factory(study_uid=study, series_uid=series) for _ in range(3)]
    result = run_tool(
        "storescu", "-aec", SCP_AE, "-aet", "MODALITY", "-to", "10", "127.0.0.1", str(running_scp.port),
        *map(str, files),
    )
    assert result.returncode == 0, result.stderr

    got = {i.sop_instance_uid: i for i in running_scp.sink.instances}
    assert len(got) == 3
    for src in files:
        ds = dcmread(src)
        inst = got[ds.SOPInstanceUID]
        assert inst.sop_class_uid == CTImageStorage
        assert inst.study_instance_uid == study and inst.series_instance_uid == series
        assert inst.transfer_syntax_uid == ExplicitVRLittleEndian
        assert inst.version == 1 and not inst.duplicate
        assert inst.calling_ae_title == "MODALITY" and inst.called_ae_title == SCP_AE
        assert inst.peer_address == "127.0.0.1"
        assert inst.path == f"{study}/{series}/{ds.SOPInstanceUID}.dcm"
        assert inst.attributes == {
            "PatientName": "Nguyễn^Văn An",
            "PatientID": "PID-0001",
            "AccessionNumber": "ACC123",
            "StudyDate": "20240102",
            "StudyDescription": "CT ngực liều thấp",
            "Modality": "CT",
            "SeriesDescription": "Lung 1.0",
        }
        stored = running_scp.spool.path(inst.path)
        assert dataset_bytes(stored) == dataset_bytes(src)
        assert stored.stat().st_size == inst.size
        assert (dcmread(stored).pixel_array == ds.pixel_array).all()
    # Logs carry UIDs and event names, never patient names or IDs.
    assert "dicom.store.ok" in caplog.text
    for secret in ("Nguy", "PID-0001", "19600101", "ACC123"):
        assert secret not in caplog.text


@needs_dcmtk
def test_resend_is_a_duplicate_and_other_content_a_new_version(
    running_scp: RunningSCP, ct_factory: Callable[..., Path]
) -> None:
    first = ct_factory(seed=1)
    ds = dcmread(first)
    send = ("storescu", "-aec", SCP_AE, "-aet", "MODALITY", "-to", "10", "127.0.0.1", str(running_scp.port))
    assert run_tool(*send, str(first)).returncode == 0
    assert run_tool(*send, str(first)).returncode == 0
    instances = running_scp.sink.instances
    assert [(i.version, i.duplicate) for i in instances] == [(1, False), (1, True)]
    assert len(spooled_dcm(running_scp)) == 1

    changed = ct_factory(
        seed=2, sop_uid=ds.SOPInstanceUID, study_uid=ds.StudyInstanceUID, series_uid=ds.SeriesInstanceUID
    )
    assert run_tool(*send, str(changed)).returncode == 0
    last = running_scp.sink.instances[-1]
    assert (last.version, last.duplicate) == (2, False)
    assert last.path.endswith(f"{ds.SOPInstanceUID}.v2.dcm")
    assert len(spooled_dcm(running_scp)) == 2
    assert dataset_bytes(running_scp.spool.path(last.path)) == dataset_bytes(changed)


@needs_dcmtk
def test_storescu_compressed_file_kept_compressed(
    running_scp: RunningSCP, tmp_path: Path
) -> None:
    ds = make_ct_dataset(seed=5)
    ds.compress(RLELossless)
    src = tmp_path / "rle.dcm"
    ds.save_as(src, enforce_file_format=True)
    result = run_tool(
        "storescu", "-aec", SCP_AE, "-aet", "MODALITY", "-xr", "-to", "10", "127.0.0.1",
        str(running_scp.port), str(src),
    )
    assert result.returncode == 0, result.stderr
    (inst,) = running_scp.sink.instances
    assert inst.transfer_syntax_uid == RLELossless
    assert dataset_bytes(running_scp.spool.path(inst.path)) == dataset_bytes(src)


@pytest.mark.usefixtures("chunked_send")
@pytest.mark.parametrize("tsyntax", [ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian])
def test_other_transfer_syntaxes_stored_as_received(
    running_scp: RunningSCP, tmp_path: Path, tsyntax: str
) -> None:
    ds = make_ct_dataset(seed=7, transfer_syntax=tsyntax)
    src = tmp_path / "in.dcm"
    ds.save_as(src, enforce_file_format=True)
    rsp = pynetdicom_store(running_scp.port, src)
    assert rsp.Status == st.SUCCESS
    (inst,) = running_scp.sink.instances
    assert inst.transfer_syntax_uid == tsyntax
    assert inst.attributes["PatientName"] == "Nguyễn^Văn An"
    stored = running_scp.spool.path(inst.path)
    assert dataset_bytes(stored) == dataset_bytes(src)
    assert dcmread(stored).PatientID == "PID-0001"


# -- failures answered with the right status ---------------------------------------------------------


@needs_dcmtk
@pytest.mark.usefixtures("chunked_send")
@pytest.mark.filterwarnings("ignore:Expected explicit VR:UserWarning")
@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        # (0008,0016) as a sequence of undefined length whose item is cut short: cannot be decoded.
        (b"\x08\x00\x16\x00SQ\x00\x00\xff\xff\xff\xff\xfe\xff\x00\xe0\x10\x00\x00\x00", st.UNDECODABLE),
        # Bytes that are no data set at all.
        (os.urandom(512), None),
    ],
)
def test_garbage_dataset_fails_and_scp_keeps_serving(
    running_scp: RunningSCP, tmp_path: Path, payload: bytes, expected: int | None
) -> None:
    src = crafted_file(tmp_path / "garbage.dcm", payload)
    rsp = pynetdicom_store(running_scp.port, src)
    assert 0xC000 <= rsp.Status <= 0xCFFF
    if expected is not None:
        assert rsp.Status == expected
        assert "cannot decode" in rsp.ErrorComment
    assert running_scp.sink.instances == []
    assert spooled_dcm(running_scp) == []
    assert echo_ok(running_scp.port)  # the next association is served
    good = tmp_path / "good.dcm"
    make_ct_dataset(seed=3).save_as(good, enforce_file_format=True)
    assert pynetdicom_store(running_scp.port, good).Status == st.SUCCESS


@pytest.mark.usefixtures("chunked_send")
def test_sop_class_mismatch_is_a900(running_scp: RunningSCP, tmp_path: Path) -> None:
    ds = make_ct_dataset(seed=1)
    ds.SOPClassUID = MRImageStorage  # the data set says MR, the request and context say CT
    src = crafted_file(tmp_path / "mismatch.dcm", encode_le(ds), sop_uid=ds.SOPInstanceUID)
    rsp = pynetdicom_store(running_scp.port, src)
    assert rsp.Status == st.DATASET_MISMATCH == 0xA900
    assert running_scp.sink.instances == []


@pytest.mark.usefixtures("chunked_send")
@pytest.mark.filterwarnings("ignore:Invalid value for VR UI:UserWarning")
def test_instance_uid_mismatch_and_missing_uids_are_c_range(running_scp: RunningSCP, tmp_path: Path) -> None:
    ds = make_ct_dataset(seed=1)
    src = crafted_file(tmp_path / "other_uid.dcm", encode_le(ds), sop_uid=generate_uid())
    assert pynetdicom_store(running_scp.port, src).Status == st.INVALID_UIDS

    ds = make_ct_dataset(seed=2)
    del ds.StudyInstanceUID
    src = crafted_file(tmp_path / "no_study.dcm", encode_le(ds), sop_uid=ds.SOPInstanceUID)
    rsp = pynetdicom_store(running_scp.port, src)
    assert rsp.Status == st.INVALID_UIDS
    assert "StudyInstanceUID" in rsp.ErrorComment

    ds = make_ct_dataset(seed=3)
    ds.SeriesInstanceUID = "1.2.03.4"  # a leading zero: not a UID, never a path
    src = crafted_file(tmp_path / "bad_series.dcm", encode_le(ds), sop_uid=ds.SOPInstanceUID)
    assert pynetdicom_store(running_scp.port, src).Status == st.INVALID_UIDS
    assert running_scp.sink.instances == []
    assert spooled_dcm(running_scp) == []


def test_disk_full_is_a700_through_a_real_association(
    running_scp: RunningSCP, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int, chunks: tuple[bytes, ...]) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    src = tmp_path / "in.dcm"
    make_ct_dataset(seed=4).save_as(src, enforce_file_format=True)
    monkeypatch.setattr(spool_mod, "_write_chunks", full)
    rsp = pynetdicom_store(running_scp.port, src)
    assert rsp.Status == st.OUT_OF_RESOURCES == 0xA700
    assert running_scp.sink.instances == []
    assert [p for p in running_scp.spool.root.rglob("*") if p.is_file() and p.name != ".lock"] == []
    monkeypatch.undo()
    assert pynetdicom_store(running_scp.port, src).Status == st.SUCCESS  # the sender's retry


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (RuntimeError("database is gone"), st.PROCESSING_FAILURE),
        (OutOfResourcesError("database locked"), st.OUT_OF_RESOURCES_IO),
        (OSError(errno.ENOSPC, "No space left on device"), st.OUT_OF_RESOURCES),
    ],
)
def test_sink_failure_gives_failure_status(
    running_scp: RunningSCP, tmp_path: Path, error: BaseException, expected: int
) -> None:
    src = tmp_path / "in.dcm"
    make_ct_dataset(seed=4).save_as(src, enforce_file_format=True)
    running_scp.sink.error = error
    assert pynetdicom_store(running_scp.port, src).Status == expected
    running_scp.sink.error = None
    # The retry finds the instance already spooled: a duplicate the sink must still record.
    assert pynetdicom_store(running_scp.port, src).Status == st.SUCCESS
    (inst,) = running_scp.sink.instances
    assert inst.duplicate and inst.version == 1


# -- allow-list --------------------------------------------------------------------------------------


@pytest.fixture
def listed_scp(tmp_path: Path) -> Iterator[RunningSCP]:
    server = start_scp(
        tmp_path,
        allowed_peers=[
            AllowedPeer(ae_title="MODALITY", host="127.0.0.1"),
            AllowedPeer(ae_title="FARAWAY", host="10.255.255.1"),
        ],
    )
    try:
        yield server
    finally:
        server.scp.stop(grace_s=1)


def _associate(port: int, calling_ae: str) -> tuple[bool, tuple[int | None, int | None, int | None] | None]:
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", port, ae_title=SCP_AE)
    if assoc.is_established:
        assoc.release()
        return True, None
    rsp = assoc.acceptor.primitive
    assert assoc.is_rejected and rsp is not None
    return False, (rsp.result, rsp.result_source, rsp.diagnostic)


def test_unlisted_calling_ae_is_rejected(listed_scp: RunningSCP) -> None:
    assert _associate(listed_scp.port, "MODALITY") == (True, None)
    # rejected-permanent, service-user, calling-AE-title-not-recognized
    assert _associate(listed_scp.port, "INTRUDER") == (False, (0x01, 0x01, 0x03))
    # A listed title from an address not listed with it.
    assert _associate(listed_scp.port, "FARAWAY") == (False, (0x01, 0x01, 0x03))
    assert _associate(listed_scp.port, "MODALITY") == (True, None)  # still serving


@needs_dcmtk
def test_unlisted_calling_ae_is_rejected_for_dcmtk(listed_scp: RunningSCP) -> None:
    assert echo_ok(listed_scp.port, calling_ae="MODALITY")
    assert not echo_ok(listed_scp.port, calling_ae="INTRUDER")


def test_stop_releases_the_port(tmp_path: Path) -> None:
    server = start_scp(tmp_path)
    port = server.port
    server.scp.stop()
    server.scp.stop()  # idempotent
    with pytest.raises(RuntimeError):
        _ = server.scp.port
    import socket

    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))


def test_max_associations_limits_concurrent_peers(tmp_path: Path) -> None:
    from dicom_gateway.scp import ScpTimeouts, StorageSCP
    from dicom_gateway.spool import Spool
    from tamsoat.core.settings import DicomSettings
    from tests.dicom_gateway.gateway_helpers import RecordingSink

    settings = DicomSettings(ae_title=SCP_AE, host="127.0.0.1", max_associations=1).model_copy(
        update={"port": 0}
    )
    scp = StorageSCP(settings, Spool(tmp_path / "spool", fsync=False), RecordingSink(), ScpTimeouts(5, 5, 5))
    with scp:
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context("1.2.840.10008.1.1")
        first = ae.associate("127.0.0.1", scp.port, ae_title=SCP_AE)
        assert first.is_established
        try:
            second = ae.associate("127.0.0.1", scp.port, ae_title=SCP_AE)
            assert second.is_rejected, f"established={second.is_established} aborted={second.is_aborted}"
            rsp = second.acceptor.primitive
            assert rsp is not None and rsp.result == 0x02  # rejected-transient: try again later
        finally:
            first.release()
        # The peer's release returns when its side is closed; our side's thread ends just after.
        deadline = time.monotonic() + 10
        while scp.active_associations and time.monotonic() < deadline:
            time.sleep(0.005)
        third = ae.associate("127.0.0.1", scp.port, ae_title=SCP_AE)
        assert third.is_established
        third.release()


def test_send_garbage_helper_gets_c210(running_scp: RunningSCP) -> None:
    from tests.dicom_gateway.garbage import send_garbage

    assert running_scp.scp.is_running
    assert send_garbage("127.0.0.1", running_scp.port, SCP_AE) == st.UNDECODABLE
    assert running_scp.sink.instances == []


def test_unexpected_sink_error_is_logged_without_its_message(
    running_scp: RunningSCP, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    src = tmp_path / "in.dcm"
    make_ct_dataset(seed=4).save_as(src, enforce_file_format=True)
    running_scp.sink.error = ValueError("INSERT failed [parameters: ('Nguyễn^Văn An', 'PID-0001')]")
    with caplog.at_level(logging.INFO):
        rsp = pynetdicom_store(running_scp.port, src)
    assert rsp.Status == st.PROCESSING_FAILURE
    assert "ValueError" in rsp.ErrorComment
    failed = [r for r in caplog.records if r.getMessage().startswith("dicom.store.failed")]
    assert failed and "source=dimse" in failed[0].getMessage()
    assert str(dcmread(src).SOPInstanceUID) in failed[0].getMessage()
    assert "Nguy" not in caplog.text and "PID-0001" not in caplog.text
