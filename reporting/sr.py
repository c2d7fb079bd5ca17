"""Findings -> DICOM Comprehensive 3D SR with TID 1500 "Measurement Report" as root.

Pure builders: no files, no network, no database, no clock unless the caller leaves
``content_datetime`` out. The structure of what is built:

* root TID 1500 (title CID 7021 "Imaging Measurement Report"), Procedure Reported = CT of chest;
* observation context (TID 1001): the algorithm as device observer (TID 1004, Device Observer UID =
  the model's Device UID) and, once signed, the verifying radiologist as person observer (TID 1003);
* one TID 1411 Volumetric ROI group per finding: Tracking Identifier + Tracking Unique Identifier
  (TID 4108), Finding Category / Finding = Morphologically abnormal structure / Nodule, Finding Site
  = Lung, TID 4019 Algorithm Identification, the region as a SCOORD3D ELLIPSOID (a sphere of the
  finding's diameter around its centre) in the series' Frame of Reference with the source images it
  crosses, and TID 1419 measurements Diameter (mm), Volume (mm3), Certainty of Finding (%);
* a finding a person measured (a radiologist edited an AI finding or added a missed one) carries that
  person as observer of its group (HAS OBS CONTEXT, TID 1002/1003), no Algorithm Identification and no
  Certainty of Finding: the AI's confidence belongs to AI measurements only; the nodule type (solid,
  part-solid, ground-glass), when stated, is a TEXT "Comment" in the group;
* the study-level Lung-RADS category, when given, is a TEXT "Comment" under Qualitative Evaluations;
* no findings: no measurement groups; instead TID 1500 "Qualitative Evaluations" says Nodule: Absent;
* SOP Common Contributing Equipment Sequence names the algorithm (Processing Equipment, Device UID);
* VerificationFlag UNVERIFIED and PreliminaryFlag PRELIMINARY until a verifier is given, then VERIFIED
  with the Verifying Observer Sequence and FINAL; CompletionFlag COMPLETE.

See ``reporting/codes.py`` for each code and the standard it comes from.
"""

from __future__ import annotations

import copy
import io
import re
from collections.abc import MutableSequence, Sequence
from dataclasses import dataclass
from datetime import datetime

import highdicom as hd
import numpy as np
from highdicom.sr import (
    AlgorithmIdentification,
    CodeContentItem,
    Comprehensive3DSR,
    ContainerContentItem,
    ContentItem,
    ContentSequence,
    DeviceObserverIdentifyingAttributes,
    FindingSite,
    GraphicTypeValues3D,
    LanguageOfContentItemAndDescendants,
    Measurement,
    MeasurementReport,
    ObservationContext,
    ObserverContext,
    PersonObserverIdentifyingAttributes,
    RelationshipTypeValues,
    SourceImageForSegmentation,
    SourceSeriesForSegmentation,
    TextContentItem,
    TrackingIdentifier,
    VolumeSurface,
    VolumetricROIMeasurementsAndQualitativeEvaluations,
)
from highdicom.sr.templates import DEFAULT_LANGUAGE
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.valuerep import DT, PersonName

from reporting import codes as rc
from tamsoat import __version__ as _TAMSOAT_VERSION
from tamsoat.core.domain import ModelIdentity, Observer, ReportFinding

#: General Equipment of the SR itself: the service that wrote it (the algorithm is in the
#: Contributing Equipment Sequence and in the content tree).
SR_MANUFACTURER = "tamsoat"
SR_MODEL_NAME = "tamsoat"
SR_SERIES_DESCRIPTION = "AI lung nodule findings"

_UTF8 = "ISO_IR 192"
_UID_PATTERN = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+")

#: Type 2 patient/study attributes that highdicom reads from the first evidence instance; a header
#: from a PACS may lack some of them, which is legal for them to be empty.
_TYPE2_HEADER_DEFAULTS: dict[str, str] = {
    "PatientName": "",
    "PatientID": "",
    "PatientBirthDate": "",
    "PatientSex": "",
    "AccessionNumber": "",
    "StudyID": "",
    "StudyDate": "",
    "StudyTime": "",
    "ReferringPhysicianName": "",
}


@dataclass(frozen=True)
class _Slice:
    sop_class_uid: str
    sop_instance_uid: str
    position_mm: float  # along the slice normal


@dataclass(frozen=True)
class _SeriesGeometry:
    """What the builder needs to know about the analysed series' geometry."""

    frame_of_reference_uid: str
    series_instance_uid: str
    axes: np.ndarray  # 3x3, rows: row direction, column direction, slice normal (LPS unit vectors)
    slices: tuple[_Slice, ...]  # instances with a usable plane, sorted by position

    @classmethod
    def from_headers(cls, headers: Sequence[Dataset]) -> _SeriesGeometry:
        for_uids = {str(ds.FrameOfReferenceUID) for ds in headers if ds.get("FrameOfReferenceUID")}
        if not for_uids:
            raise ValueError("the evidence has no FrameOfReferenceUID; 3-D coordinates cannot be placed in it")
        if len(for_uids) > 1:
            raise ValueError(f"the evidence spans {len(for_uids)} frames of reference; expected one")
        axes: np.ndarray | None = None
        slices: list[_Slice] = []
        for ds in headers:
            iop = ds.get("ImageOrientationPatient")
            ipp = ds.get("ImagePositionPatient")
            if iop is None or ipp is None or len(iop) != 6 or len(ipp) != 3:
                continue
            plane = _orthonormal_axes([float(v) for v in iop])
            if plane is None:
                continue
            if axes is None:
                axes = plane
            position = float(np.dot(axes[2], np.asarray([float(v) for v in ipp])))
            slices.append(_Slice(str(ds.SOPClassUID), str(ds.SOPInstanceUID), position))
        slices.sort(key=lambda s: s.position_mm)
        return cls(
            frame_of_reference_uid=for_uids.pop(),
            series_instance_uid=str(headers[0].SeriesInstanceUID),
            axes=np.eye(3) if axes is None else axes,
            slices=tuple(slices),
        )

    def slices_through(self, center_mm: np.ndarray, radius_mm: float) -> list[_Slice]:
        """The slices a sphere crosses; at least the one nearest its centre."""
        if not self.slices:
            return []
        c = float(np.dot(self.axes[2], center_mm))
        crossing = [s for s in self.slices if abs(s.position_mm - c) <= radius_mm]
        if crossing:
            return crossing
        return [min(self.slices, key=lambda s: abs(s.position_mm - c))]


def _orthonormal_axes(iop: Sequence[float]) -> np.ndarray | None:
    """Row, column and normal unit vectors from Image Orientation (Patient), made orthonormal."""
    row = np.asarray(iop[:3], dtype=float)
    col = np.asarray(iop[3:], dtype=float)
    if np.linalg.norm(row) < 1e-6:
        return None
    row = row / np.linalg.norm(row)
    col = col - np.dot(col, row) * row
    if np.linalg.norm(col) < 1e-6:
        return None
    col = col / np.linalg.norm(col)
    return np.stack([row, col, np.cross(row, col)])


def build_measurement_report(
    evidence: Sequence[Dataset],
    findings: Sequence[ReportFinding],
    algorithm: ModelIdentity,
    *,
    verifier: Observer | None,
    institution: str,
    series_number: int = 9001,
    instance_number: int = 1,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    content_datetime: datetime | None = None,
    lung_rads: str | None = None,
) -> Dataset:
    """Build a Comprehensive 3D SR (TID 1500) with one measurement group per finding.

    ``evidence`` are the analysed series' instances (headers are enough; pixel data is neither
    needed nor copied); they give the patient, the study, the Frame of Reference and the source
    images that are referenced. ``verifier`` None gives a preliminary, UNVERIFIED report; an
    Observer gives a FINAL, VERIFIED one with that Verifying Observer. ``content_datetime`` is used
    for the content, series, instance creation, verification and contribution times (now if None).

    Raises ValueError for evidence from more than one study or frame of reference, evidence
    without a Frame of Reference, and findings that cannot be encoded (non-positive diameter,
    negative volume, confidence outside 0..1, duplicate tracking identifiers, invalid UIDs).
    """
    if len(evidence) == 0:
        raise ValueError("no evidence: the report needs the analysed series' instances")
    headers = [_header_copy(ds) for ds in evidence]
    _check_same_study(headers)
    _check_findings(findings)
    if lung_rads is not None and not re.fullmatch(r"[0-4][ABX]?|S", lung_rads):
        raise ValueError(f"not a Lung-RADS category: {lung_rads!r}")
    for uid in (series_instance_uid, sop_instance_uid):
        if uid is not None and not _is_uid(uid):
            raise ValueError(f"not a valid DICOM UID: {uid!r}")
    if not _is_uid(algorithm.device_uid):
        raise ValueError(f"algorithm device_uid is not a valid DICOM UID: {algorithm.device_uid!r}")

    when = content_datetime if content_datetime is not None else datetime.now()
    geometry = _SeriesGeometry.from_headers(headers)
    observation_context = _observation_context(algorithm, verifier)

    content: ContentSequence
    if findings:
        algorithm_id = _algorithm_identification(algorithm)
        content = MeasurementReport(
            observation_context=observation_context,
            procedure_reported=rc.PROCEDURE_CT_CHEST,
            imaging_measurements=[_measurement_group(f, algorithm_id, geometry) for f in findings],
            title=rc.REPORT_TITLE,
        )
        if lung_rads:
            content[0].ContentSequence.append(_qualitative_evaluations([_lung_rads_comment(lung_rads)]))
    else:
        content = _no_findings_report(observation_context, lung_rads)

    equipment = hd.ContributingEquipment(
        manufacturer=algorithm.manufacturer,
        purpose_of_reference=rc.PROCESSING_EQUIPMENT,
        manufacturer_model_name=algorithm.name,
        software_versions=algorithm.version,
        contribution_datetime=when,
        contribution_description=f"Lung nodule detection ({algorithm.model_id})",
    )
    equipment.DeviceUID = algorithm.device_uid

    signed = verifier is not None
    sr = Comprehensive3DSR(
        evidence=headers,
        content=content[0],
        series_instance_uid=series_instance_uid or hd.UID(),
        series_number=series_number,
        sop_instance_uid=sop_instance_uid or hd.UID(),
        instance_number=instance_number,
        manufacturer=SR_MANUFACTURER,
        manufacturer_model_name=SR_MODEL_NAME,
        software_versions=_TAMSOAT_VERSION,
        series_description=SR_SERIES_DESCRIPTION,
        is_complete=True,
        is_final=signed,
        is_verified=signed,
        institution_name=institution,
        verifying_observer_name=_person_name(verifier.name) if verifier is not None else None,
        verifying_organization=verifier.organization if verifier is not None else None,
        contributing_equipment=[equipment],
        content_date=when.date(),
        content_time=when.time(),
        series_date=when.date(),
        series_time=when.time(),
        specific_character_set=_UTF8,
    )
    _pin_times(sr, when)
    return sr


def encode_part10(ds: Dataset) -> bytes:
    """Encode a dataset as a DICOM Part 10 file (preamble, DICM, File Meta Information)."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


# --- content ------------------------------------------------------------------------------------


def _observation_context(algorithm: ModelIdentity, verifier: Observer | None) -> ObservationContext:
    device = ObserverContext(
        observer_type=rc.OBSERVER_DEVICE,
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=algorithm.device_uid,
            name=algorithm.name,
            manufacturer_name=algorithm.manufacturer,
            model_name=f"{algorithm.model_id} {algorithm.version}",
        ),
    )
    person = _person_context(verifier) if verifier is not None else None
    return ObservationContext(observer_person_context=person, observer_device_context=device)


def _algorithm_identification(algorithm: ModelIdentity) -> AlgorithmIdentification:
    return AlgorithmIdentification(
        name=algorithm.name,
        version=algorithm.version,
        manufacturer=algorithm.manufacturer,
        parameters=[f"model_id={algorithm.model_id}", f"weights_sha256={algorithm.weights_sha256}"],
    )


def _measurement_group(
    finding: ReportFinding,
    algorithm_id: AlgorithmIdentification,
    geometry: _SeriesGeometry,
) -> VolumetricROIMeasurementsAndQualitativeEvaluations:
    center = np.asarray(finding.center_mm, dtype=float)
    radius = float(finding.diameter_mm) / 2.0
    # ELLIPSOID: endpoints of three orthogonal axes (PS3.3 C.18.9.1.2); a sphere here, with its
    # axes along the image rows, columns and normal so that two of them lie in the slice plane.
    ends = [center + sign * radius * axis for axis in geometry.axes for sign in (-1.0, 1.0)]
    crossed = geometry.slices_through(center, radius)
    surface = VolumeSurface(
        graphic_type=GraphicTypeValues3D.ELLIPSOID,
        graphic_data=np.stack(ends),
        frame_of_reference_uid=geometry.frame_of_reference_uid,
        source_images=[SourceImageForSegmentation(s.sop_class_uid, s.sop_instance_uid) for s in crossed] or None,
        source_series=None if crossed else SourceSeriesForSegmentation(geometry.series_instance_uid),
    )
    by_person = finding.measured_by is not None
    measurements = [Measurement(name=rc.DIAMETER, value=float(finding.diameter_mm), unit=rc.MILLIMETER)]
    if finding.volume_mm3 is not None:
        measurements.append(
            Measurement(name=rc.VOLUME, value=float(finding.volume_mm3), unit=rc.CUBIC_MILLIMETER)
        )
    if finding.confidence is not None and not by_person:
        measurements.append(
            Measurement(
                name=rc.CERTAINTY_OF_FINDING,
                value=round(float(finding.confidence) * 100.0, 4),
                unit=rc.PERCENT,
            )
        )
    group = VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=finding.tracking_uid, identifier=finding.tracking_id),
        referenced_volume_surface=surface,
        finding_category=rc.FINDING_CATEGORY,
        finding_type=rc.NODULE,
        finding_sites=[FindingSite(anatomic_location=rc.LUNG)],
        algorithm_id=None if by_person else algorithm_id,
        measurements=measurements,
    )
    items = group[0].ContentSequence
    if finding.measured_by is not None:
        # The observation context changes for this group and its descendants (PS3.3 C.17.5): the
        # person who measured it. Placed after the tracking identifiers, before the measurements.
        person = _person_context(finding.measured_by)
        for offset, item in enumerate(person):
            items.insert(2 + offset, item)
    if finding.nodule_type:
        items.append(
            TextContentItem(
                name=rc.COMMENT,
                value=f"Nodule type: {_NODULE_TYPE_TEXT.get(finding.nodule_type, finding.nodule_type)}",
                relationship_type=RelationshipTypeValues.CONTAINS,
            )
        )
    return group


_NODULE_TYPE_TEXT = {"solid": "solid", "part_solid": "part-solid", "ground_glass": "ground-glass"}


def _person_context(person: Observer) -> ObserverContext:
    return ObserverContext(
        observer_type=rc.OBSERVER_PERSON,
        observer_identifying_attributes=PersonObserverIdentifyingAttributes(
            name=_person_name(person.name),
            organization_name=person.organization or None,
        ),
    )


def _lung_rads_comment(category: str) -> TextContentItem:
    return TextContentItem(
        name=rc.COMMENT,
        value=f"Lung-RADS v2022 category {category}",
        relationship_type=RelationshipTypeValues.CONTAINS,
    )


def _qualitative_evaluations(items: Sequence[ContentItem]) -> ContainerContentItem:
    evaluations = ContainerContentItem(
        name=rc.QUALITATIVE_EVALUATIONS,
        relationship_type=RelationshipTypeValues.CONTAINS,
    )
    evaluations.ContentSequence = ContentSequence(list(items))
    return evaluations


def _no_findings_report(observation_context: ObservationContext, lung_rads: str | None = None) -> MeasurementReport:
    """TID 1500 without measurement groups: row 12 "Qualitative Evaluations" says Nodule: Absent.

    TID 1500 needs at least one of rows 6 (Imaging Measurements), 10 (Derived Imaging
    Measurements) and 12 (Qualitative Evaluations); an empty Imaging Measurements container would
    state nothing, so the report says explicitly that no nodule is reported. highdicom's
    MeasurementReport constructor insists on at least one group, so the root is assembled here
    from highdicom's own content items and read back as a MeasurementReport.
    """
    root = ContainerContentItem(name=rc.REPORT_TITLE, template_id="1500")
    root.ContentSequence = ContentSequence()
    root.ContentSequence.extend(LanguageOfContentItemAndDescendants(DEFAULT_LANGUAGE))
    root.ContentSequence.extend(observation_context)
    root.ContentSequence.append(
        CodeContentItem(
            name=codes.DCM.ProcedureReported,
            value=rc.PROCEDURE_CT_CHEST,
            relationship_type=RelationshipTypeValues.HAS_CONCEPT_MOD,
        )
    )
    statements: list[ContentItem] = [
        CodeContentItem(
            name=rc.NODULE,
            value=rc.ABSENT,
            relationship_type=RelationshipTypeValues.CONTAINS,
        )
    ]
    if lung_rads:
        statements.append(_lung_rads_comment(lung_rads))
    root.ContentSequence.append(_qualitative_evaluations(statements))
    return MeasurementReport.from_sequence([root])


# --- checks and small helpers ------------------------------------------------------------------


def _header_copy(ds: Dataset) -> Dataset:
    """A deep copy of the public, non-pixel top-level attributes, with Type 2 gaps filled.

    The caller's datasets are never changed, and no pixel data is copied into the SR's evidence.
    """
    out = Dataset()
    for elem in ds:
        if elem.tag.is_private or elem.tag.group >= 0x7FE0 or 0x6000 <= elem.tag.group <= 0x60FF:
            continue
        new = copy.deepcopy(elem)
        if new.VR == "PN" and new.value is not None:
            # Keep the name, drop the source encoding: the SR is written as UTF-8.
            if isinstance(new.value, PersonName):
                new.value = PersonName(str(new.value))
            elif isinstance(new.value, MutableSequence):
                new.value = [PersonName(str(v)) for v in new.value]
        out.add(new)
    for keyword, default in _TYPE2_HEADER_DEFAULTS.items():
        if keyword not in out or out[keyword].value is None:
            setattr(out, keyword, default)
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID", "SOPInstanceUID"):
        if not out.get(keyword):
            raise ValueError(f"evidence instance without {keyword}")
    return out


def _check_same_study(headers: Sequence[Dataset]) -> None:
    studies = {str(ds.StudyInstanceUID) for ds in headers}
    if len(studies) != 1:
        raise ValueError(f"the evidence spans {len(studies)} studies; a report covers one study")
    patients = {str(ds.PatientID) for ds in headers}
    if len(patients) != 1:
        raise ValueError("the evidence has more than one PatientID")


def _check_findings(findings: Sequence[ReportFinding]) -> None:
    ids: set[str] = set()
    uids: set[str] = set()
    for f in findings:
        if not f.tracking_id:
            raise ValueError("finding without tracking_id")
        if f.tracking_id in ids:
            raise ValueError(f"duplicate tracking_id {f.tracking_id!r}")
        if f.tracking_uid in uids:
            raise ValueError(f"duplicate tracking_uid {f.tracking_uid!r}")
        if not _is_uid(f.tracking_uid):
            raise ValueError(f"tracking_uid is not a valid DICOM UID: {f.tracking_uid!r}")
        ids.add(f.tracking_id)
        uids.add(f.tracking_uid)
        values = [*f.center_mm, f.diameter_mm, *(v for v in (f.volume_mm3, f.confidence) if v is not None)]
        if len(f.center_mm) != 3 or not all(np.isfinite(v) for v in values):
            raise ValueError(f"finding {f.tracking_id!r}: centre and measurements must be finite")
        if f.diameter_mm <= 0:
            raise ValueError(f"finding {f.tracking_id!r}: diameter must be positive")
        if f.volume_mm3 is not None and f.volume_mm3 < 0:
            raise ValueError(f"finding {f.tracking_id!r}: volume must not be negative")
        if f.confidence is not None and not 0.0 <= f.confidence <= 1.0:
            raise ValueError(f"finding {f.tracking_id!r}: confidence must be within 0..1")
        if f.measured_by is not None and not f.measured_by.name.strip():
            raise ValueError(f"finding {f.tracking_id!r}: measured_by without a name")


def _person_name(name: str) -> str:
    """``name`` as a PN value; a name without any ``^`` is taken as the family name alone.

    highdicom refuses caret-less names as likely mistakes; "Bono^" is the unambiguous spelling.
    """
    name = name.strip()
    if not name:
        raise ValueError("verifier without a name")
    return name if "^" in name else name + "^"


def _is_uid(value: str) -> bool:
    """A valid DICOM UID (PS3.5 9.1): dotted decimal components, no leading zeros, at most 64."""
    return isinstance(value, str) and len(value) <= 64 and _UID_PATTERN.fullmatch(value) is not None


def _pin_times(sr: Dataset, when: datetime) -> None:
    """Replace the wall-clock times highdicom stamps with the report's own time."""
    sr.InstanceCreationDate = when.strftime("%Y%m%d")
    sr.InstanceCreationTime = when.strftime("%H%M%S")
    if when.utcoffset() is not None:
        sr.TimezoneOffsetFromUTC = when.strftime("%z")
    for item in sr.get("VerifyingObserverSequence", []):
        item.VerificationDateTime = DT(when)
    for item in sr.get("ContributingEquipmentSequence", []):
        purposes = item.get("PurposeOfReferenceCodeSequence", [])
        processing = any(p.CodeValue == rc.PROCESSING_EQUIPMENT.value for p in purposes)
        if processing and "ContributionDateTime" in item:
            item.ContributionDateTime = DT(when)
