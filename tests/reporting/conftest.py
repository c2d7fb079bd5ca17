"""Fixtures for the reporting tests: a small synthetic CT series and what the report needs."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from tamsoat.core.domain import ModelIdentity, Observer, ReportFinding

ROWS = COLS = 32
N_SLICES = 10
PIXEL_SPACING_MM = 0.8
SLICE_SPACING_MM = 2.5
ORIGIN_MM = (-12.4, -20.0, -100.0)
# A patient name that would run script in a page that fails to escape it: the SR must carry it as
# data, unchanged (escaping is the web layer's job).
PATIENT_NAME = "Canary^<script>alert(1)</script>"
PATIENT_ID = "TS-0001"


def make_ct_series(
    n_slices: int = N_SLICES,
    *,
    study_uid: str | None = None,
    character_set: str | None = None,
    patient_name: str = PATIENT_NAME,
) -> list[Dataset]:
    """CT Image Storage instances of one axial series with real, consistent geometry."""
    study_uid = study_uid or generate_uid()
    series_uid, frame_uid = generate_uid(), generate_uid()
    slices = []
    for i in range(n_slices):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        sop_uid = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        if character_set:
            ds.SpecificCharacterSet = character_set
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.PatientName = patient_name
        ds.PatientID = PATIENT_ID
        ds.PatientBirthDate = "19580214"
        ds.PatientSex = "F"
        ds.StudyDate = "20240311"
        ds.StudyTime = "091500"
        ds.AccessionNumber = "ACC-77"
        ds.StudyID = "S77"
        ds.ReferringPhysicianName = "Tran^Binh"
        ds.Modality = "CT"
        ds.Manufacturer = "Synthetic Scanner Co"
        ds.ManufacturerModelName = "Phantom CT"
        ds.SeriesNumber = 3
        ds.InstanceNumber = i + 1
        ds.BodyPartExamined = "CHEST"
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.ImagePositionPatient = [ORIGIN_MM[0], ORIGIN_MM[1], ORIGIN_MM[2] + SLICE_SPACING_MM * i]
        ds.SliceLocation = ORIGIN_MM[2] + SLICE_SPACING_MM * i
        ds.PixelSpacing = [PIXEL_SPACING_MM, PIXEL_SPACING_MM]
        ds.SliceThickness = SLICE_SPACING_MM
        ds.Rows, ds.Columns = ROWS, COLS
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelData = np.full((ROWS, COLS), 1024 - 800, dtype=np.int16).tobytes()
        slices.append(ds)
    return slices


def slice_z(index: int) -> float:
    return ORIGIN_MM[2] + SLICE_SPACING_MM * index


@pytest.fixture
def ct_series() -> list[Dataset]:
    return make_ct_series()


@pytest.fixture
def series_factory() -> Callable[..., list[Dataset]]:
    """make_ct_series, for tests that need a series with other settings."""
    return make_ct_series


@pytest.fixture
def algorithm() -> ModelIdentity:
    return ModelIdentity(
        model_id="lung-nodule-phantom",
        version="0.3.1",
        name="tamsoat lung nodule detector",
        manufacturer="tamsoat project",
        device_uid=generate_uid(),
        weights_sha256="9f" * 32,
    )


@pytest.fixture
def findings() -> list[ReportFinding]:
    return [
        # 8 mm nodule centred between slices 3 and 4
        ReportFinding(
            tracking_id="N1",
            tracking_uid=generate_uid(),
            center_mm=(0.6, -8.25, slice_z(3) + 1.0),
            diameter_mm=8.0,
            volume_mm3=268.1,
            confidence=0.91,
        ),
        # 4.5 mm nodule exactly on slice 7
        ReportFinding(
            tracking_id="N2",
            tracking_uid=generate_uid(),
            center_mm=(-4.0, 2.4, slice_z(7)),
            diameter_mm=4.5,
            volume_mm3=47.71,
            confidence=0.42,
        ),
    ]


@pytest.fixture
def verifier() -> Observer:
    return Observer(name="Nguyễn^Thị Lan", organization="Bệnh viện Tầm Soát")


@pytest.fixture
def report_time() -> datetime:
    return datetime(2024, 3, 11, 14, 30, 5)
