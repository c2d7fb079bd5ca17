"""Write small synthetic CT series with pydicom, with full control over their geometry (tests only)."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)

Position = Sequence[float] | npt.NDArray[np.float64]

Edit = Callable[[int, Dataset], None]


def _ds_str(v: float) -> str:
    return f"{v:.6f}".rstrip("0").rstrip(".") or "0"


def ct_header(
    *,
    series_uid: str,
    study_uid: str,
    position: Position,
    orientation: Sequence[float] = AXIAL,
    pixel_spacing: tuple[float, float] = (0.7, 0.7),
    rows: int = 16,
    columns: int = 16,
    instance_number: int = 1,
    slice_thickness: float = 1.25,
    modality: str = "CT",
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    description: str = "Chest 1.25mm",
    body_part: str = "CHEST",
    slope: float = 1.0,
    intercept: float = -1024.0,
) -> Dataset:
    """A CT image header (no pixel data) with a file meta group."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    sop_uid = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = generate_uid()
    ds.Modality = modality
    ds.ImageType = list(image_type)
    ds.SeriesDescription = description
    ds.BodyPartExamined = body_part
    ds.PatientName = "Phantom^Test"
    ds.PatientID = "TEST"
    ds.InstanceNumber = instance_number
    ds.ImagePositionPatient = [_ds_str(v) for v in position]
    ds.ImageOrientationPatient = [_ds_str(v) for v in orientation]
    ds.PixelSpacing = [_ds_str(v) for v in pixel_spacing]
    ds.SliceThickness = _ds_str(slice_thickness)
    ds.Rows = rows
    ds.Columns = columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleSlope = _ds_str(slope)
    ds.RescaleIntercept = _ds_str(intercept)
    ds.RescaleType = "HU"
    return ds


def normal_of(orientation: Sequence[float]) -> npt.NDArray[np.float64]:
    o = np.asarray(orientation, dtype=np.float64)
    return np.cross(o[:3], o[3:])


def patient_point(
    position: Position,
    orientation: Sequence[float],
    pixel_spacing: tuple[float, float],
    row: float,
    column: float,
) -> npt.NDArray[np.float64]:
    """The DICOM PS3.3 C.7.6.2.1.1 equation: patient mm of pixel (row, column) in a slice."""
    o = np.asarray(orientation, dtype=np.float64)
    return (
        np.asarray(position, dtype=np.float64)
        + column * pixel_spacing[1] * o[:3]
        + row * pixel_spacing[0] * o[3:]
    )


def write_slices(
    out_dir: Path,
    slices: Sequence[tuple[Position, npt.NDArray[np.floating]]],
    *,
    orientation: Sequence[float] = AXIAL,
    pixel_spacing: tuple[float, float] = (0.7, 0.7),
    slope: float = 1.0,
    intercept: float = -1024.0,
    series_uid: str | None = None,
    study_uid: str | None = None,
    shuffle_seed: int | None = 0,
    edit: Edit | None = None,
    **header: object,
) -> list[Path]:
    """Write one file per ``(ImagePositionPatient, HU plane [row, column])``.

    File names and InstanceNumbers are assigned in a shuffled order (``shuffle_seed``; None keeps
    the given order), so a reader must sort by position. ``edit(n, ds)`` may change slice n.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    names = list(range(len(slices)))
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(names)
    paths = []
    for n, (position, hu) in enumerate(slices):
        rows, columns = hu.shape
        ds = ct_header(
            series_uid=series_uid,
            study_uid=study_uid,
            position=position,
            orientation=orientation,
            pixel_spacing=pixel_spacing,
            rows=rows,
            columns=columns,
            instance_number=names[n] + 1,
            slope=slope,
            intercept=intercept,
            **header,  # type: ignore[arg-type]
        )
        stored = np.round((np.asarray(hu, dtype=np.float64) - intercept) / slope)
        ds.PixelData = np.clip(stored, -32768, 32767).astype("<i2").tobytes()
        if edit is not None:
            edit(n, ds)
        path = out_dir / f"IM{names[n]:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return sorted(paths)


def stack_positions(
    origin: Sequence[float], orientation: Sequence[float], step_mm: float, count: int
) -> list[npt.NDArray[np.float64]]:
    """Positions of ``count`` slices ``step_mm`` apart along the slice normal (negative: against it)."""
    normal = normal_of(orientation)
    return [np.asarray(origin, dtype=np.float64) + k * step_mm * normal for k in range(count)]


def write_volume(
    out_dir: Path,
    hu_kji: npt.NDArray[np.floating],
    *,
    origin: Sequence[float] = (0.0, 0.0, 0.0),
    orientation: Sequence[float] = AXIAL,
    spacing_ijk: tuple[float, float, float] = (0.7, 0.7, 1.25),
    **kwargs: object,
) -> list[Path]:
    """Write a ``[k, j, i]`` HU array as slices stacked along the normal from ``origin``."""
    positions = stack_positions(origin, orientation, spacing_ijk[2], hu_kji.shape[0])
    return write_slices(
        out_dir,
        list(zip(positions, hu_kji, strict=True)),
        orientation=orientation,
        pixel_spacing=(spacing_ijk[1], spacing_ijk[0]),
        **kwargs,  # type: ignore[arg-type]
    )
