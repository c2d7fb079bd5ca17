"""Helpers for the gateway tests: tiny generated CT files, free ports, a running SCP, DCMTK tools."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid

from dicom_gateway.scp import InstanceSink, ScpTimeouts, StorageSCP, StoredInstance
from dicom_gateway.spool import Spool
from tamsoat.core.settings import AllowedPeer, DicomSettings

SCP_AE = "TAMSOAT"


def have_dcmtk() -> bool:
    return all(shutil.which(tool) for tool in ("storescu", "storescp", "echoscu"))


needs_dcmtk = pytest.mark.skipif(not have_dcmtk(), reason="DCMTK command-line tools not installed")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for tools that cannot bind port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port}")


def dataset_offset(path: Path) -> int:
    """Byte offset where the data set starts in a Part-10 file (after the File Meta group)."""
    data = path.read_bytes()
    assert data[128:132] == b"DICM"
    # (0002,0000) UL group length, explicit VR LE: tag(4) VR(2) len(2) value(4)
    assert data[132:136] == b"\x02\x00\x00\x00"
    group_length = int.from_bytes(data[140:144], "little")
    return 144 + group_length


def dataset_bytes(path: Path) -> bytes:
    return path.read_bytes()[dataset_offset(path) :]


def encode_le(ds: Dataset, *, implicit: bool = False) -> bytes:
    """``ds``'s data set (no File Meta Information), little endian, explicit or implicit VR."""
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, implicit
    write_dataset(buf, ds)
    return buf.getvalue()


def make_ct_dataset(
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    seed: int = 0,
    transfer_syntax: str = ExplicitVRLittleEndian,
    size: int = 16,
) -> Dataset:
    """A ``size`` x ``size`` (default 16) CT Image Storage instance with the attributes the gateway reads."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    sop_uid = sop_uid or generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.FrameOfReferenceUID = generate_uid()
    ds.PatientName = "Nguyễn^Văn An"
    ds.PatientID = "PID-0001"
    ds.PatientBirthDate = "19600101"
    ds.PatientSex = "M"
    ds.AccessionNumber = "ACC123"
    ds.StudyDate = "20240102"
    ds.StudyTime = "101010"
    ds.StudyID = "1"
    ds.StudyDescription = "CT ngực liều thấp"
    ds.SeriesDescription = "Lung 1.0"
    ds.SeriesNumber = 2
    ds.InstanceNumber = seed + 1
    ds.Modality = "CT"
    ds.Manufacturer = "tamsoat-tests"
    ds.PatientPosition = "FFS"
    ds.PositionReferenceIndicator = ""
    ds.AcquisitionNumber = 1
    ds.ReferringPhysicianName = ""
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ImagePositionPatient = [0.0, 0.0, float(seed)]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [0.7, 0.7]
    ds.SliceThickness = 1.0
    ds.KVP = 120
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = size
    ds.Columns = size
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    rng = np.random.default_rng(seed)
    ds.PixelData = rng.integers(-1000, 1000, size=(size, size), dtype=np.int16).tobytes()
    return ds


def write_ct(path: Path, **kwargs: object) -> Path:
    ds = make_ct_dataset(**kwargs)  # type: ignore[arg-type]
    ds.save_as(path, enforce_file_format=True)
    return path


@dataclass
class RecordingSink:
    """An InstanceSink that records what it got, then hands it to ``forward`` (if set); ``error`` (if
    set) is raised instead."""

    instances: list[StoredInstance] = field(default_factory=list)
    error: BaseException | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    forward: InstanceSink | None = None

    def __call__(self, instance: StoredInstance) -> None:
        if self.error is not None:
            raise self.error
        with self.lock:
            self.instances.append(instance)
        if self.forward is not None:
            self.forward(instance)


@dataclass
class RunningSCP:
    scp: StorageSCP
    spool: Spool
    sink: RecordingSink

    @property
    def port(self) -> int:
        return self.scp.port


def start_scp(
    tmp_path: Path,
    allowed_peers: list[AllowedPeer] | None = None,
    extra_ae_titles: list[str] | None = None,
    forward: InstanceSink | None = None,
) -> RunningSCP:
    """A running SCP on 127.0.0.1 (a free port) called ``SCP_AE`` (and ``extra_ae_titles``); what it
    stores is recorded in ``RunningSCP.sink`` and then handed to ``forward`` (e.g. the database)."""
    settings = DicomSettings(ae_title=SCP_AE, host="127.0.0.1", allowed_peers=allowed_peers or [],
                             extra_ae_titles=extra_ae_titles or [])
    settings = settings.model_copy(update={"port": 0})
    spool = Spool(tmp_path / "spool", fsync=True)
    sink = RecordingSink(forward=forward)
    scp = StorageSCP(settings, spool, sink, ScpTimeouts(acse=5, dimse=10, network=10))
    scp.start()
    return RunningSCP(scp, spool, sink)


def run_tool(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, check=False)
