"""The DICOM CT series writer: valid CT Image Storage instances whose geometry matches the volume."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from training.phantom import Phantom, make_phantom
from training.series import CT_IMAGE_STORAGE, read_ground_truth, write_ct_series, write_ground_truth


@pytest.fixture(scope="module")
def phantom() -> Phantom:
    return make_phantom(11, shape_kji=(24, 128, 128), spacing_ijk=(2.0, 2.0, 2.5), n_nodules=1,
                        nodule_diameters_mm=[8.0])


@pytest.fixture(scope="module")
def series(phantom: Phantom, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_ct_series(phantom, tmp_path_factory.mktemp("series"), seed=3)


def test_one_ct_instance_per_slice_in_one_series(phantom: Phantom, series: list[Path]) -> None:
    assert len(series) == phantom.volume.array.shape[0]
    datasets = [pydicom.dcmread(p) for p in series]
    assert {ds.SOPClassUID for ds in datasets} == {CT_IMAGE_STORAGE}
    assert len({ds.SOPInstanceUID for ds in datasets}) == len(datasets)
    assert len({ds.SeriesInstanceUID for ds in datasets}) == 1
    assert len({ds.StudyInstanceUID for ds in datasets}) == 1
    ds = datasets[0]
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert ds.preamble == b"\x00" * 128
    assert ds.Modality == "CT" and ds.BodyPartExamined == "CHEST"
    assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert float(ds.RescaleSlope) == 1.0 and float(ds.RescaleIntercept) == -1024.0
    assert ds.PatientName == "PHANTOM^DEMO" and ds.PatientID == "PH0001"


def test_geometry_matches_the_affine(phantom: Phantom, series: list[Path]) -> None:
    vol = phantom.volume
    for k, path in enumerate(series):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert ds.InstanceNumber == k + 1
        np.testing.assert_allclose([float(v) for v in ds.ImagePositionPatient],
                                   vol.index_to_patient([0, 0, k]), atol=1e-4)
        np.testing.assert_allclose([float(v) for v in ds.ImageOrientationPatient], [1, 0, 0, 0, 1, 0])
        row_spacing, col_spacing = (float(v) for v in ds.PixelSpacing)
        assert (col_spacing, row_spacing, float(ds.SliceThickness)) == pytest.approx(vol.spacing)


def test_pixels_round_trip_in_hu(phantom: Phantom, series: list[Path]) -> None:
    k = len(series) // 2
    ds = pydicom.dcmread(series[k])
    hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    expected = np.clip(phantom.volume.array[k], -1024, 3071)
    assert np.max(np.abs(hu - expected)) <= 0.5 + 1e-3


def test_same_seed_same_uids_other_seed_other_study(phantom: Phantom, tmp_path: Path,
                                                    series: list[Path]) -> None:
    again = write_ct_series(phantom, tmp_path / "a", seed=3)
    other = write_ct_series(phantom, tmp_path / "b", seed=4, study_instance_uid="1.2.3.4",
                            patient_id="PH0002")
    first = pydicom.dcmread(series[0], stop_before_pixels=True)
    assert pydicom.dcmread(again[0]).SOPInstanceUID == first.SOPInstanceUID
    b = pydicom.dcmread(other[0], stop_before_pixels=True)
    assert b.StudyInstanceUID == "1.2.3.4" and b.PatientID == "PH0002"
    assert b.SeriesInstanceUID != first.SeriesInstanceUID


def test_passes_dciodvfy_without_errors(series: list[Path]) -> None:
    tool = shutil.which("dciodvfy")
    assert tool is not None, "dciodvfy (Debian package dicom3tools) is required for this test"
    for path in (series[0], series[len(series) // 2]):
        result = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=60)
        report = result.stdout + result.stderr
        errors = [line for line in report.splitlines() if "Error" in line]
        assert not errors, report


def test_ground_truth_round_trip(phantom: Phantom, tmp_path: Path) -> None:
    path = tmp_path / "truth" / "ground_truth.json"
    write_ground_truth(phantom, path)
    assert read_ground_truth(path) == phantom.nodules
