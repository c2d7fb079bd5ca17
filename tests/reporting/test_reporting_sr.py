"""The TID 1500 Comprehensive 3D SR: valid per dciodvfy, and readable back with highdicom/pydicom."""

from __future__ import annotations

import copy
import io
import shutil
import subprocess
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from highdicom.sr import (
    CodedConcept,
    Comprehensive3DSR,
    GraphicTypeValues3D,
    VolumetricROIMeasurementsAndQualitativeEvaluations,
)
from highdicom.sr.utils import find_content_items
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from reporting import build_measurement_report, encode_part10
from reporting import codes as rc
from tamsoat.core.domain import ModelIdentity, Observer, ReportFinding

COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"


# --- helpers ------------------------------------------------------------------------------------


def _build(
    evidence: Sequence[Dataset],
    findings: Sequence[ReportFinding],
    algorithm: ModelIdentity,
    *,
    verifier: Observer | None = None,
    when: datetime | None = None,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    series_number: int = 9001,
    instance_number: int = 1,
) -> Dataset:
    return build_measurement_report(
        evidence,
        findings,
        algorithm,
        verifier=verifier,
        institution="Bệnh viện Tầm Soát",
        series_number=series_number,
        instance_number=instance_number,
        series_instance_uid=series_instance_uid,
        sop_instance_uid=sop_instance_uid,
        content_datetime=when or datetime(2024, 3, 11, 14, 30, 5),
    )


def _write(ds: Dataset, tmp_path: Path, name: str = "sr.dcm") -> Path:
    path = tmp_path / name
    path.write_bytes(encode_part10(ds))
    return path


def _dciodvfy(path: Path) -> list[str]:
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.fail("dciodvfy (Debian package dicom3tools) is not installed; CI installs it")
    proc = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=120, check=False)
    return (proc.stdout + proc.stderr).splitlines()


def _assert_valid(path: Path) -> list[str]:
    lines = _dciodvfy(path)
    errors = [line for line in lines if "Error" in line]
    assert not errors, "dciodvfy:\n" + "\n".join(lines)
    return lines


def _read(path: Path) -> Comprehensive3DSR:
    sr = hd.sr.srread(path)
    assert isinstance(sr, Comprehensive3DSR)
    return sr


def _report(sr: Comprehensive3DSR) -> hd.sr.MeasurementReport:
    report = sr.content
    assert isinstance(report, hd.sr.MeasurementReport)
    return report


def _groups(sr: Comprehensive3DSR) -> list[VolumetricROIMeasurementsAndQualitativeEvaluations]:
    return _report(sr).get_volumetric_roi_measurement_groups()


def _surface(group: VolumetricROIMeasurementsAndQualitativeEvaluations) -> hd.sr.VolumeSurface:
    roi = group.roi
    assert isinstance(roi, hd.sr.VolumeSurface)
    return roi


def _measurement(group: VolumetricROIMeasurementsAndQualitativeEvaluations, name: CodedConcept) -> hd.sr.Measurement:
    found = group.get_measurements(name=name)
    assert len(found) == 1, f"expected one {name.meaning} measurement, got {len(found)}"
    return found[0]


def _ellipsoid(group: VolumetricROIMeasurementsAndQualitativeEvaluations) -> np.ndarray:
    roi = _surface(group)
    assert roi.graphic_type == GraphicTypeValues3D.ELLIPSOID
    data = roi.graphic_data
    assert isinstance(data, np.ndarray) and data.shape == (6, 3)
    return data


def _z(ds: Dataset) -> float:
    return float(ds.ImagePositionPatient[2])


# --- validity -----------------------------------------------------------------------------------


def test_preliminary_report_passes_dciodvfy(
    tmp_path: Path, ct_series: list[Dataset], findings: list[ReportFinding], algorithm: ModelIdentity
) -> None:
    _assert_valid(_write(_build(ct_series, findings, algorithm), tmp_path))


def test_signed_report_passes_dciodvfy(
    tmp_path: Path,
    ct_series: list[Dataset],
    findings: list[ReportFinding],
    algorithm: ModelIdentity,
    verifier: Observer,
) -> None:
    _assert_valid(_write(_build(ct_series, findings, algorithm, verifier=verifier), tmp_path))


@pytest.mark.parametrize("signed", [False, True])
def test_zero_findings_is_a_valid_report_that_says_no_nodule(
    tmp_path: Path, ct_series: list[Dataset], algorithm: ModelIdentity, verifier: Observer, signed: bool
) -> None:
    ds = _build(ct_series, [], algorithm, verifier=verifier if signed else None)
    path = _write(ds, tmp_path)
    _assert_valid(path)

    sr = _read(path)
    assert _groups(sr) == []
    assert _report(sr).get_planar_roi_measurement_groups() == []
    root = sr.content[0]
    evaluations = find_content_items(root, name=rc.QUALITATIVE_EVALUATIONS)
    assert len(evaluations) == 1
    statements = find_content_items(evaluations[0], name=rc.NODULE)
    assert [s.value for s in statements] == [rc.ABSENT]
    assert sr.VerificationFlag == ("VERIFIED" if signed else "UNVERIFIED")
    assert sr.CompletionFlag == "COMPLETE"
    assert {e[2] for e in sr.get_evidence()} == {d.SOPInstanceUID for d in ct_series}


def test_part10_encoding(ct_series: list[Dataset], findings: list[ReportFinding], algorithm: ModelIdentity) -> None:
    ds = _build(ct_series, findings, algorithm)
    data = encode_part10(ds)
    assert data[128:132] == b"DICM"
    back = pydicom.dcmread(io.BytesIO(data))
    assert back.file_meta.MediaStorageSOPClassUID == COMPREHENSIVE_3D_SR
    assert back.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert back.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian


# --- content round trip -------------------------------------------------------------------------


def test_round_trip_measurement_groups(
    tmp_path: Path, ct_series: list[Dataset], findings: list[ReportFinding], algorithm: ModelIdentity
) -> None:
    path = _write(_build(ct_series, findings, algorithm), tmp_path)
    plain = pydicom.dcmread(path)
    assert plain.SOPClassUID == COMPREHENSIVE_3D_SR
    assert plain.Modality == "SR"
    sr = Comprehensive3DSR.from_dataset(plain)
    report = sr.content
    assert isinstance(report, hd.sr.MeasurementReport)
    assert report[0].ContentTemplateSequence[0].TemplateIdentifier == "1500"

    groups = _groups(sr)
    assert [g.tracking_uid for g in groups] == [f.tracking_uid for f in findings]
    assert [g.tracking_identifier for g in groups] == [f.tracking_id for f in findings]
    frame_uid = ct_series[0].FrameOfReferenceUID
    for finding in findings:
        (group,) = report.get_volumetric_roi_measurement_groups(tracking_uid=finding.tracking_uid)
        assert group.finding_type == rc.NODULE
        assert group.finding_type == codes.SCT.Nodule
        assert group.finding_category == rc.FINDING_CATEGORY
        assert [s.value for s in group.finding_sites] == [codes.SCT.Lung]

        diameter = _measurement(group, rc.DIAMETER)
        assert diameter.value == pytest.approx(finding.diameter_mm)
        assert diameter.unit == codes.UCUM.Millimeter
        assert diameter.unit.value == "mm" and diameter.unit.scheme_designator == "UCUM"
        volume = _measurement(group, rc.VOLUME)
        assert volume.value == pytest.approx(finding.volume_mm3)
        assert volume.unit.value == "mm3" and volume.unit.scheme_designator == "UCUM"
        certainty = _measurement(group, rc.CERTAINTY_OF_FINDING)
        assert certainty.value == pytest.approx(finding.confidence * 100.0)
        assert certainty.unit.value == "%" and certainty.unit.scheme_designator == "UCUM"

        ends = _ellipsoid(group)
        assert _surface(group).frame_of_reference_uid == frame_uid
        np.testing.assert_allclose(ends.reshape(3, 2, 3).mean(axis=1), [finding.center_mm] * 3, atol=1e-3)
        lengths = np.linalg.norm(ends[1::2] - ends[0::2], axis=1)
        np.testing.assert_allclose(lengths, [finding.diameter_mm] * 3, atol=1e-3)


def test_source_images_are_the_slices_the_nodule_crosses(
    tmp_path: Path, ct_series: list[Dataset], findings: list[ReportFinding], algorithm: ModelIdentity
) -> None:
    sr = _read(_write(_build(ct_series, findings, algorithm), tmp_path))
    by_uid = {d.SOPInstanceUID: d for d in ct_series}
    for finding, group in zip(findings, _groups(sr), strict=True):
        roi = _surface(group)
        assert roi.has_source_images()
        refs = [item.referenced_sop_instance_uid for item in roi.source_images_for_segmentation]
        assert refs, "each finding references at least one source image"
        radius = finding.diameter_mm / 2
        expected = [d.SOPInstanceUID for d in ct_series if abs(_z(d) - finding.center_mm[2]) <= radius]
        assert sorted(refs) == sorted(expected)
        nearest = min(ct_series, key=lambda d: abs(_z(d) - finding.center_mm[2]))
        assert nearest.SOPInstanceUID in refs
        assert all(by_uid[r].SOPClassUID == ct_series[0].SOPClassUID for r in refs)
    # highdicom's filters by ROI kind find every group (its filter by referenced SOP Instance UID
    # does not look into volume surfaces' source images, hence the direct checks above)
    found = _report(sr).get_volumetric_roi_measurement_groups(
        reference_type=codes.DCM.VolumeSurface, graphic_type=GraphicTypeValues3D.ELLIPSOID
    )
    assert [g.tracking_uid for g in found] == [f.tracking_uid for f in findings]


def test_small_nodule_between_slices_still_references_the_nearest_slice(
    tmp_path: Path, ct_series: list[Dataset], algorithm: ModelIdentity
) -> None:
    z = (_z(ct_series[5]) + _z(ct_series[6])) / 2 + 0.2  # 1.05 mm from slice 6, 1.45 mm from slice 5
    tiny = ReportFinding("T1", generate_uid(), (0.0, 0.0, z), 1.0, 0.52, 0.3)
    sr = _read(_write(_build(ct_series, [tiny], algorithm), tmp_path))
    (group,) = _groups(sr)
    refs = [i.referenced_sop_instance_uid for i in _surface(group).source_images_for_segmentation]
    assert refs == [ct_series[6].SOPInstanceUID]


def test_procedure_reported_is_the_imaging_procedure(
    ct_series: list[Dataset], findings: list[ReportFinding], algorithm: ModelIdentity
) -> None:
    ds = _build(ct_series, findings, algorithm)
    items = find_content_items(ds, name=codes.DCM.ProcedureReported)
    assert [i.value for i in items] == [rc.PROCEDURE_CT_CHEST]
    assert rc.PROCEDURE_CT_CHEST.value == "169069000"
    assert algorithm.name not in rc.PROCEDURE_CT_CHEST.meaning


def test_verification_flags(
    tmp_path: Path,
    ct_series: list[Dataset],
    findings: list[ReportFinding],
    algorithm: ModelIdentity,
    verifier: Observer,
    report_time: datetime,
) -> None:
    preliminary = _read(_write(_build(ct_series, findings, algorithm, when=report_time), tmp_path, "p.dcm"))
    assert preliminary.VerificationFlag == "UNVERIFIED"
    assert preliminary.PreliminaryFlag == "PRELIMINARY"
    assert preliminary.CompletionFlag == "COMPLETE"
    assert "VerifyingObserverSequence" not in preliminary
    assert _report(preliminary).get_observer_contexts(observer_type=codes.DCM.Person) == []

    signed = _read(
        _write(_build(ct_series, findings, algorithm, verifier=verifier, when=report_time), tmp_path, "s.dcm")
    )
    assert signed.VerificationFlag == "VERIFIED"
    assert signed.PreliminaryFlag == "FINAL"
    assert signed.CompletionFlag == "COMPLETE"
    (item,) = signed.VerifyingObserverSequence
    assert str(item.VerifyingObserverName) == verifier.name
    assert item.VerifyingOrganization == verifier.organization
    assert item.VerificationDateTime == "20240311143005"
    (person,) = _report(signed).get_observer_contexts(observer_type=codes.DCM.Person)
    attrs = person.observer_identifying_attributes
    assert isinstance(attrs, hd.sr.PersonObserverIdentifyingAttributes)
    assert str(attrs.name) == verifier.name
    assert attrs.organization_name == verifier.organization
    # the same findings either way: signing changes the flags and observers, not the groups
    assert [g.tracking_uid for g in _groups(signed)] == [g.tracking_uid for g in _groups(preliminary)]


def test_algorithm_is_identified(
    tmp_path: Path, ct_series: list[Dataset], findings: list[ReportFinding], algorithm: ModelIdentity
) -> None:
    sr = _read(_write(_build(ct_series, findings, algorithm), tmp_path))

    # Contributing Equipment Sequence: one Processing Equipment item for the algorithm
    items = [e for e in sr.ContributingEquipmentSequence if e.get("DeviceUID") == algorithm.device_uid]
    assert len(items) == 1
    item = items[0]
    assert item.Manufacturer == algorithm.manufacturer
    assert item.ManufacturerModelName == algorithm.name
    assert item.SoftwareVersions == algorithm.version
    assert item.PurposeOfReferenceCodeSequence[0].CodeValue == "109102"
    assert item.PurposeOfReferenceCodeSequence[0].CodingSchemeDesignator == "DCM"

    # Observation context: the algorithm is the device observer, Device Observer UID = Device UID
    (device,) = _report(sr).get_observer_contexts(observer_type=codes.DCM.Device)
    attrs = device.observer_identifying_attributes
    assert isinstance(attrs, hd.sr.DeviceObserverIdentifyingAttributes)
    assert attrs.uid == algorithm.device_uid
    assert attrs.name == algorithm.name
    assert attrs.manufacturer_name == algorithm.manufacturer
    assert algorithm.version in (attrs.model_name or "")

    # TID 4019 Algorithm Identification inside every group
    for group in _groups(sr):
        names = find_content_items(group[0], name=codes.DCM.AlgorithmName)
        versions = find_content_items(group[0], name=codes.DCM.AlgorithmVersion)
        params = find_content_items(group[0], name=codes.DCM.AlgorithmParameters)
        assert [n.value for n in names] == [algorithm.name]
        assert [v.value for v in versions] == [algorithm.version]
        assert f"weights_sha256={algorithm.weights_sha256}" in {p.value for p in params}


def test_same_patient_and_study_and_evidence(
    tmp_path: Path, ct_series: list[Dataset], findings: list[ReportFinding], algorithm: ModelIdentity
) -> None:
    series_uid, sop_uid = generate_uid(), generate_uid()
    ds = _build(
        ct_series,
        findings,
        algorithm,
        series_instance_uid=series_uid,
        sop_instance_uid=sop_uid,
        series_number=9101,
        instance_number=2,
    )
    sr = _read(_write(ds, tmp_path))
    src = ct_series[0]
    assert sr.StudyInstanceUID == src.StudyInstanceUID
    assert sr.PatientID == src.PatientID
    assert str(sr.PatientName) == str(src.PatientName)  # the <script> canary is data, kept verbatim
    assert sr.PatientBirthDate == src.PatientBirthDate
    assert sr.AccessionNumber == src.AccessionNumber
    assert sr.SeriesInstanceUID == series_uid and sr.SOPInstanceUID == sop_uid
    assert sr.SeriesInstanceUID != src.SeriesInstanceUID
    assert sr.SeriesNumber == 9101 and sr.InstanceNumber == 2
    assert sr.InstitutionName == "Bệnh viện Tầm Soát"
    evidence = sr.get_evidence()
    assert {e[2] for e in evidence} == {d.SOPInstanceUID for d in ct_series}
    assert {(e[0], e[1]) for e in evidence} == {(src.StudyInstanceUID, src.SeriesInstanceUID)}
    assert "PertinentOtherEvidenceSequence" not in sr


def test_headers_only_evidence_and_inputs_untouched(
    ct_series: list[Dataset], findings: list[ReportFinding], algorithm: ModelIdentity
) -> None:
    headers = []
    for d in ct_series:
        h = copy.deepcopy(d)
        del h.PixelData
        headers.append(h)
    before = [copy.deepcopy(d) for d in ct_series]
    from_headers = _build(headers, findings, algorithm, sop_instance_uid="1.2.3.4", series_instance_uid="1.2.3")
    from_full = _build(ct_series, findings, algorithm, sop_instance_uid="1.2.3.4", series_instance_uid="1.2.3")
    assert encode_part10(from_headers) == encode_part10(from_full)
    assert "PixelData" not in from_full
    assert ct_series == before


def test_build_is_deterministic(
    ct_series: list[Dataset], findings: list[ReportFinding], algorithm: ModelIdentity, verifier: Observer
) -> None:
    # a re-send of the same report must be byte-identical (same UID, same content)
    sop, series = generate_uid(), generate_uid()
    first = encode_part10(
        _build(ct_series, findings, algorithm, verifier=verifier, sop_instance_uid=sop, series_instance_uid=series)
    )
    second = encode_part10(
        _build(ct_series, findings, algorithm, verifier=verifier, sop_instance_uid=sop, series_instance_uid=series)
    )
    assert first == second


def test_non_ascii_names_from_latin1_evidence_round_trip(
    tmp_path: Path,
    series_factory: Callable[..., list[Dataset]],
    findings: list[ReportFinding],
    algorithm: ModelIdentity,
    verifier: Observer,
) -> None:
    series = series_factory(character_set="ISO_IR 100", patient_name="Müller^Jörg")
    # write and read back the source so that the names arrive Latin-1 encoded, as from a PACS
    read_back = []
    for i, d in enumerate(series):
        p = tmp_path / f"ct{i}.dcm"
        d.save_as(p, enforce_file_format=True)
        read_back.append(pydicom.dcmread(p))
    path = _write(_build(read_back, findings, algorithm, verifier=verifier), tmp_path)
    _assert_valid(path)
    sr = _read(path)
    assert sr.SpecificCharacterSet == "ISO_IR 192"
    assert str(sr.PatientName) == "Müller^Jörg"
    assert str(sr.VerifyingObserverSequence[0].VerifyingObserverName) == verifier.name


# --- refusals -----------------------------------------------------------------------------------


def test_rejects_unencodable_input(
    ct_series: list[Dataset], findings: list[ReportFinding], algorithm: ModelIdentity
) -> None:
    good = findings[0]
    with pytest.raises(ValueError, match="evidence"):
        _build([], findings, algorithm)
    with pytest.raises(ValueError, match="tracking_id"):
        _build(ct_series, [good, good], algorithm)
    with pytest.raises(ValueError, match="confidence"):
        _build(ct_series, [ReportFinding("X", generate_uid(), good.center_mm, 5.0, 60.0, 1.5)], algorithm)
    with pytest.raises(ValueError, match="diameter"):
        _build(ct_series, [ReportFinding("X", generate_uid(), good.center_mm, 0.0, 0.0, 0.5)], algorithm)
    with pytest.raises(ValueError, match="UID"):
        _build(ct_series, [ReportFinding("X", "not-a-uid", good.center_mm, 5.0, 60.0, 0.5)], algorithm)

    other_study = copy.deepcopy(ct_series[0])
    other_study.StudyInstanceUID = generate_uid()
    with pytest.raises(ValueError, match="stud"):
        _build([*ct_series, other_study], findings, algorithm)

    no_frame = [copy.deepcopy(d) for d in ct_series]
    for d in no_frame:
        del d.FrameOfReferenceUID
    with pytest.raises(ValueError, match="FrameOfReferenceUID"):
        _build(no_frame, findings, algorithm)


def test_signed_with_family_name_only_and_timezone(
    tmp_path: Path, ct_series: list[Dataset], findings: list[ReportFinding], algorithm: ModelIdentity
) -> None:
    when = datetime(2024, 3, 11, 21, 0, 0, tzinfo=timezone(timedelta(hours=7)))
    ds = _build(ct_series, findings, algorithm, verifier=Observer("Bono", "Hospital"), when=when)
    path = _write(ds, tmp_path)
    _assert_valid(path)
    sr = _read(path)
    assert sr.TimezoneOffsetFromUTC == "+0700"
    assert sr.ContentTime == "210000"
    item = sr.VerifyingObserverSequence[0]
    assert item.VerificationDateTime == "20240311210000+0700"
    assert item.VerifyingObserverName.family_name == "Bono"


def test_oblique_series_geometry(
    tmp_path: Path, ct_series: list[Dataset], findings: list[ReportFinding], algorithm: ModelIdentity
) -> None:
    # tilt the series 20 degrees about the x axis; positions step along the new normal
    angle = np.deg2rad(20.0)
    row = np.array([1.0, 0.0, 0.0])
    col = np.array([0.0, np.cos(angle), -np.sin(angle)])
    normal = np.cross(row, col)
    origin = np.array([-12.4, -20.0, -100.0])
    for i, d in enumerate(ct_series):
        d.ImageOrientationPatient = [*row.tolist(), *col.tolist()]
        d.ImagePositionPatient = (origin + 2.5 * i * normal).tolist()
    center = origin + 10.0 * row + 8.0 * col + 5.0 * normal  # on slice 2
    finding = ReportFinding("O1", generate_uid(), (center[0], center[1], center[2]), 3.0, 14.1, 0.7)
    path = _write(_build(ct_series, [finding], algorithm), tmp_path)
    _assert_valid(path)
    (group,) = _groups(_read(path))
    ends = _ellipsoid(group)
    np.testing.assert_allclose(ends.reshape(3, 2, 3).mean(axis=1), [center] * 3, atol=1e-3)
    axes = ends[1::2] - ends[0::2]
    np.testing.assert_allclose(axes @ axes.T, np.eye(3) * 9.0, atol=1e-3)  # orthogonal, 3 mm long
    refs = [i.referenced_sop_instance_uid for i in _surface(group).source_images_for_segmentation]
    assert refs == [ct_series[2].SOPInstanceUID]  # 5 mm along the normal = slice 2, radius 1.5 mm
