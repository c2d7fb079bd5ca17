"""Write a phantom as a DICOM CT series (CT Image Storage, one file per axial slice) and its ground truth.

UIDs not given are derived from ``seed`` (UUID v5 under the 2.25 root), so the same phantom, seed
and patient give the same files, and different seeds give different studies.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian

from inference.volume import Volume
from training.phantom import Phantom, PhantomNodule

CT_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.2")
IMPLEMENTATION_CLASS_UID = UID("2.25.99124379281432614040213532311468406217")
IMPLEMENTATION_VERSION = "TAMSOAT_010"
RESCALE_INTERCEPT = -1024.0
_UID_NAMESPACE = uuid.UUID("6f3b9f0e-3a51-4c8e-9a8f-7d1c2b5e4a10")


def uid_from(*parts: object) -> UID:
    """A deterministic DICOM UID (2.25 root) derived from ``parts``."""
    return UID(f"2.25.{uuid.uuid5(_UID_NAMESPACE, '/'.join(str(p) for p in parts)).int}")


def _ds(values: list[float]) -> list[str]:
    """Decimal strings of at most 16 characters (DICOM DS)."""
    out = []
    for v in values:
        s = f"{v:.6f}".rstrip("0").rstrip(".")
        if s in ("-0", ""):
            s = "0"
        out.append(s[:16])
    return out


def _geometry(volume: Volume) -> tuple[list[str], list[str], float, float]:
    """ImageOrientationPatient, PixelSpacing (row, column), slice spacing and thickness."""
    si, sj, sk = volume.spacing
    row_dir = volume.affine[:3, 0] / si  # direction of increasing column index i
    col_dir = volume.affine[:3, 1] / sj  # direction of increasing row index j
    return _ds([*row_dir, *col_dir]), _ds([sj, si]), sk, sk


def _base_dataset(phantom: Phantom, *, patient_name: str, patient_id: str, study_uid: UID, series_uid: UID,
                  frame_uid: UID, study_description: str, when: datetime) -> Dataset:
    vol = phantom.volume
    _k, rows, cols = vol.array.shape
    iop, pixel_spacing, _, thickness = _geometry(vol)
    date, time = when.strftime("%Y%m%d"), when.strftime("%H%M%S")
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.StudyDate = date
    ds.SeriesDate = date
    ds.AcquisitionDate = date
    ds.ContentDate = date
    ds.StudyTime = time
    ds.SeriesTime = time
    ds.AcquisitionTime = time
    ds.ContentTime = time
    ds.AccessionNumber = ""
    ds.Modality = "CT"
    ds.Manufacturer = "tamsoat"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = study_description
    ds.SeriesDescription = "PHANTOM AXIAL 1.25"[: 64]
    ds.ManufacturerModelName = "tamsoat chest phantom"
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.BodyPartExamined = "CHEST"
    ds.SliceThickness = _ds([thickness])[0]
    ds.KVP = "120"
    ds.SpacingBetweenSlices = _ds([vol.spacing[2]])[0]
    ds.DataCollectionDiameter = "500"
    ds.SoftwareVersions = "tamsoat training.phantom 0.1.0"
    ds.ReconstructionDiameter = _ds([max(rows * vol.spacing[1], cols * vol.spacing[0])])[0]
    ds.GantryDetectorTilt = "0"
    ds.TableHeight = "150"
    ds.RotationDirection = "CW"
    ds.XRayTubeCurrent = 40
    ds.ExposureTime = 500
    ds.Exposure = 20
    ds.ConvolutionKernel = "STANDARD"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = 2
    ds.AcquisitionNumber = 1
    ds.ImageOrientationPatient = iop
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.PixelSpacing = pixel_spacing
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.WindowCenter = ["-600", "40"]
    ds.WindowWidth = ["1500", "400"]
    ds.WindowCenterWidthExplanation = ["LUNG", "MEDIASTINUM"]
    ds.RescaleIntercept = _ds([RESCALE_INTERCEPT])[0]
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.LossyImageCompression = "00"
    return ds


def write_ct_series(phantom: Phantom, out_dir: Path, *, patient_name: str = "PHANTOM^DEMO",
                    patient_id: str = "PH0001", study_instance_uid: str | None = None,
                    series_instance_uid: str | None = None, study_description: str = "CT CHEST LOW DOSE",
                    seed: int = 0) -> list[Path]:
    """Write one CT Image Storage file per axial slice into ``out_dir``; return the paths in slice order.

    Pixels are stored as unsigned 12-bit values in 16-bit words with RescaleSlope 1 and
    RescaleIntercept -1024, so HU below -1024 or above 3071 are clipped.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    study_uid = UID(study_instance_uid) if study_instance_uid else uid_from("study", seed, patient_id)
    series_uid = UID(series_instance_uid) if series_instance_uid else uid_from("series", seed, study_uid)
    frame_uid = uid_from("frame", seed, study_uid)
    vol = phantom.volume
    ds = _base_dataset(phantom, patient_name=patient_name, patient_id=patient_id, study_uid=study_uid,
                       series_uid=series_uid, frame_uid=frame_uid, study_description=study_description,
                       when=datetime.now(UTC))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    ds.file_meta = meta
    ds.preamble = b"\x00" * 128

    paths: list[Path] = []
    for k in range(vol.array.shape[0]):
        sop_uid = uid_from("instance", series_uid, k)
        meta.MediaStorageSOPInstanceUID = sop_uid
        ds.SOPInstanceUID = sop_uid
        ds.InstanceNumber = k + 1
        position = vol.index_to_patient([0.0, 0.0, float(k)])
        ds.ImagePositionPatient = _ds(list(position))
        ds.SliceLocation = _ds([float(position[2])])[0]
        stored = np.clip(np.rint(vol.array[k] - RESCALE_INTERCEPT), 0, 4095).astype("<u2")
        ds.PixelData = stored.tobytes()
        path = out_dir / f"CT{k + 1:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def ground_truth_dict(phantom: Phantom) -> dict[str, Any]:
    """The ground truth as JSON-ready data: nodules (centre in patient LPS mm), shape and affine."""
    return {
        "coordinate_system": "DICOM patient LPS, mm",
        "shape_kji": list(phantom.volume.array.shape),
        "affine": phantom.volume.affine.tolist(),
        "nodules": [
            {"center_mm": list(n.center_mm), "diameter_mm": n.diameter_mm, "kind": n.kind}
            for n in phantom.nodules
        ],
    }


def write_ground_truth(phantom: Phantom, path: Path) -> None:
    """Write the nodules (centre mm, equivalent-sphere diameter mm, kind) as JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(ground_truth_dict(phantom), indent=2) + "\n")


def read_ground_truth(path: Path) -> tuple[PhantomNodule, ...]:
    """The nodules of a ground-truth JSON written by ``write_ground_truth``."""
    data = json.loads(Path(path).read_text())
    return tuple(
        PhantomNodule(center_mm=(float(n["center_mm"][0]), float(n["center_mm"][1]), float(n["center_mm"][2])),
                      diameter_mm=float(n["diameter_mm"]), kind=str(n["kind"]))
        for n in data["nodules"]
    )
