"""De-identification of DICOM instances for research snapshots: PS3.15 Annex E, Basic Application Level
Confidentiality Profile, with the Retain Longitudinal Temporal Information with Modified Dates Option.

The action for every attribute we meet is data (``ACTIONS``), in the profile's letters:

* ``D`` replace with a dummy value (here: a keyed pseudonym, so one patient keeps one pseudonym within a
  snapshot);
* ``Z`` replace with an empty value;
* ``X`` remove;
* ``K`` keep (attributes the Basic Profile does not list: geometry, acquisition technique, pixels);
* ``C`` clean: dates shifted by a per-patient offset (the option 113107), so intervals between a
  patient's studies are kept;
* ``U`` replace a UID with a new one, the same new one for the same old one throughout a snapshot.

Anything not in the table is removed (``X``): an allow-list, so an attribute we have not reviewed never
leaks. Private attributes are removed. The keys are derived from a per-snapshot secret with HMAC-SHA256;
the secret lives only in memory while the snapshot is written, so pseudonyms, new UIDs and date offsets
cannot be linked back to the source, nor between two snapshots.

Pure functions on pydicom datasets: no files, no database, no network.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from enum import StrEnum

from pydicom.datadict import keyword_for_tag
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID

IMPLEMENTATION_CLASS_UID = UID("2.25.99124379281432614040213532311468406217")
IMPLEMENTATION_VERSION = "TAMSOAT_DEID1"
PSEUDONYM_PREFIX = "ANON-"
DATE_SHIFT_DAYS = (30, 395)  # a patient's dates move back by this many days (inclusive range)


class Action(StrEnum):
    DUMMY = "D"
    ZERO = "Z"
    REMOVE = "X"
    KEEP = "K"
    CLEAN = "C"
    UID = "U"


D, Z, X, K, C, U = (Action.DUMMY, Action.ZERO, Action.REMOVE, Action.KEEP, Action.CLEAN, Action.UID)

# The action table for the attributes we meet (PS3.15 Table E.1-1, Basic Profile, with option 113107 turning
# the dates' X/Z/D into C). Keywords not listed here are removed.
ACTIONS: Mapping[str, Action] = {
    # --- patient: identity replaced by a pseudonym; characteristics removed --------------------------
    "PatientName": D, "PatientID": D,
    "PatientBirthDate": Z, "PatientSex": Z,
    "PatientBirthTime": X, "PatientBirthName": X, "PatientMotherBirthName": X, "PatientAge": X,
    "PatientSize": X, "PatientWeight": X, "PatientAddress": X, "PatientTelephoneNumbers": X,
    "OtherPatientIDs": X, "OtherPatientIDsSequence": X, "OtherPatientNames": X, "IssuerOfPatientID": X,
    "MedicalRecordLocator": X, "EthnicGroup": X, "Occupation": X, "AdditionalPatientHistory": X,
    "PatientComments": X, "MilitaryRank": X, "BranchOfService": X, "CountryOfResidence": X,
    "RegionOfResidence": X, "PatientReligiousPreference": X, "ResponsiblePerson": X,
    "PatientInsurancePlanCodeSequence": X, "MedicalAlerts": X, "Allergies": X, "SmokingStatus": X,
    "PregnancyStatus": X, "LastMenstrualDate": X, "PatientState": X,
    # --- people and places ---------------------------------------------------------------------------
    "ReferringPhysicianName": Z, "ReferringPhysicianAddress": X, "ReferringPhysicianTelephoneNumbers": X,
    "PerformingPhysicianName": X, "OperatorsName": X, "PhysiciansOfRecord": X, "NameOfPhysiciansReadingStudy": X,
    "RequestingPhysician": X, "ScheduledPerformingPhysicianName": X, "PersonName": X,
    "InstitutionName": X, "InstitutionAddress": X, "InstitutionalDepartmentName": X, "StationName": X,
    "DeviceSerialNumber": X, "SoftwareVersions": X, "DetectorID": X, "GantryID": X,
    # --- study and request: identifiers emptied, free text removed -----------------------------------
    "AccessionNumber": Z, "StudyID": Z,
    "StudyDescription": X, "SeriesDescription": X, "ImageComments": X, "ProtocolName": X,
    "RequestedProcedureDescription": X, "RequestedProcedureID": X, "PerformedProcedureStepDescription": X,
    "PerformedProcedureStepID": X, "ScheduledProcedureStepDescription": X, "AdmittingDiagnosesDescription": X,
    "DerivationDescription": X, "ReasonForStudy": X, "ReasonForTheRequestedProcedure": X,
    "AcquisitionComments": X, "ContrastBolusAgent": Z, "TimezoneOffsetFromUTC": X,
    "RequestAttributesSequence": X, "ReferencedStudySequence": X, "ReferencedPatientSequence": X,
    "ReferencedPerformedProcedureStepSequence": X, "ProcedureCodeSequence": X, "ReferencedImageSequence": X,
    "SourceImageSequence": X, "ContributingEquipmentSequence": X, "OriginalAttributesSequence": X,
    # (overlays, groups 60xx: removed by group, see ``_apply``)
    # --- dates shifted per patient (option 113107); times of day kept ----------------------------------
    "StudyDate": C, "SeriesDate": C, "AcquisitionDate": C, "ContentDate": C, "InstanceCreationDate": C,
    "AcquisitionDateTime": C,
    "StudyTime": K, "SeriesTime": K, "AcquisitionTime": K, "ContentTime": K, "InstanceCreationTime": K,
    # --- UIDs replaced consistently ---------------------------------------------------------------------
    "StudyInstanceUID": U, "SeriesInstanceUID": U, "SOPInstanceUID": U, "FrameOfReferenceUID": U,
    "ReferencedSOPInstanceUID": U, "ReferencedFrameOfReferenceUID": U, "IrradiationEventUID": U,
    "InstanceCreatorUID": U, "ConcatenationUID": U, "DimensionOrganizationUID": U,
    "SynchronizationFrameOfReferenceUID": U, "StorageMediaFileSetUID": U, "TransactionUID": U,
    # --- kept: what the image is and where its voxels are (no identity) -------------------------------
    "SpecificCharacterSet": K, "ImageType": K, "SOPClassUID": K, "ReferencedSOPClassUID": K, "Modality": K,
    "Manufacturer": K, "ManufacturerModelName": K, "BodyPartExamined": K, "PatientPosition": K,
    "SeriesNumber": K, "AcquisitionNumber": K, "InstanceNumber": K, "PositionReferenceIndicator": K,
    "ImagePositionPatient": K, "ImageOrientationPatient": K, "SliceLocation": K, "SliceThickness": K,
    "SpacingBetweenSlices": K, "PixelSpacing": K, "KVP": K, "DataCollectionDiameter": K,
    "ReconstructionDiameter": K, "DistanceSourceToDetector": K, "DistanceSourceToPatient": K,
    "GantryDetectorTilt": K, "TableHeight": K, "RotationDirection": K, "ExposureTime": K, "XRayTubeCurrent": K,
    "Exposure": K, "ExposureInuAs": K, "FilterType": K, "GeneratorPower": K, "FocalSpots": K,
    "ConvolutionKernel": K, "RevolutionTime": K, "SingleCollimationWidth": K, "TotalCollimationWidth": K,
    "TableSpeed": K, "TableFeedPerRotation": K, "SpiralPitchFactor": K, "CTDIvol": K,
    "ReconstructionAlgorithm": K, "ScanOptions": K, "AnatomicRegionSequence": K,
    "CodeValue": K, "CodingSchemeDesignator": K, "CodingSchemeVersion": K, "CodeMeaning": K,
    "SamplesPerPixel": K, "PhotometricInterpretation": K, "Rows": K, "Columns": K, "BitsAllocated": K,
    "BitsStored": K, "HighBit": K, "PixelRepresentation": K, "PixelPaddingValue": K,
    "PixelPaddingRangeLimit": K, "SmallestImagePixelValue": K, "LargestImagePixelValue": K,
    "WindowCenter": K, "WindowWidth": K, "WindowCenterWidthExplanation": K, "RescaleIntercept": K,
    "RescaleSlope": K, "RescaleType": K, "LossyImageCompression": K, "LossyImageCompressionRatio": K,
    "LossyImageCompressionMethod": K, "PixelData": K, "BurnedInAnnotation": K,
    "RecognizableVisualFeatures": K,
    # --- written by us: the de-identification record ----------------------------------------------------
    "PatientIdentityRemoved": K, "DeidentificationMethod": K, "DeidentificationMethodCodeSequence": K,
    "LongitudinalTemporalInformationModified": K,
}

# DCM codes (CID 7050 De-identification Method) for what ``deidentify`` does.
BASIC_PROFILE_CODE = ("113100", "Basic Application Confidentiality Profile")
MODIFIED_DATES_CODE = ("113107", "Retain Longitudinal Temporal Information Modified Dates Option")
# DeidentificationMethod (LO, each value at most 64 characters).
METHOD_VALUES = ("tamsoat PS3.15 E.1 Basic Application Confidentiality Profile",
                 "Retain Longitudinal Temporal Info Modified Dates (per patient)",
                 "Pseudonyms by keyed HMAC; private attributes removed",
                 "UIDs replaced consistently within the snapshot")
METHOD_TEXT = "; ".join(METHOD_VALUES)


@dataclass(frozen=True)
class Keys:
    """The keyed derivations of one snapshot. ``secret`` is never written anywhere."""

    secret: bytes

    def _mac(self, purpose: str, value: str) -> bytes:
        return hmac.new(self.secret, f"{purpose}\x00{value}".encode(), hashlib.sha256).digest()

    def uid(self, old: str) -> str:
        """The new UID for ``old`` (2.25 root, 128 bits of the HMAC): same input, same UID."""
        return f"2.25.{int.from_bytes(self._mac('uid', old.strip())[:16], 'big')}"

    def pseudonym(self, patient_key: str) -> str:
        """The patient's pseudonym, e.g. ``ANON-7KQ2M4XJDA``."""
        code = base64.b32encode(self._mac("patient", patient_key)[:10]).decode().rstrip("=")
        return f"{PSEUDONYM_PREFIX}{code[:12]}"

    def reader(self, name: str) -> str:
        """A pseudonymous id for the radiologist who decided a finding."""
        return "reader-" + self._mac("reader", name).hex()[:8]

    def date_offset_days(self, patient_key: str) -> int:
        """How many days this patient's dates move (negative: into the past), never zero."""
        lo, hi = DATE_SHIFT_DAYS
        return -(lo + int.from_bytes(self._mac("dates", patient_key)[:4], "big") % (hi - lo + 1))

    def split(self, pseudonym: str, test_fraction: float) -> str:
        """``train`` or ``test``, decided by the pseudonym (so one patient's studies stay together)."""
        bucket = int.from_bytes(self._mac("split", pseudonym)[:4], "big") / 2**32
        return "test" if bucket < test_fraction else "train"


@dataclass
class DeidReport:
    """What was done to one dataset (keywords only, never values)."""

    actions: dict[str, set[str]] = field(default_factory=dict)  # action letter -> keywords
    unlisted_removed: set[str] = field(default_factory=set)
    private_removed: int = 0

    def note(self, action: Action, keyword: str) -> None:
        self.actions.setdefault(action.value, set()).add(keyword)

    def merge(self, other: DeidReport) -> None:
        for a, kws in other.actions.items():
            self.actions.setdefault(a, set()).update(kws)
        self.unlisted_removed |= other.unlisted_removed
        self.private_removed += other.private_removed


def shift_date(value: str, days: int) -> str:
    """A DA value (YYYYMMDD) moved by ``days``; empty or unreadable values become empty."""
    text = str(value).strip()
    if len(text) < 8 or not text[:8].isdigit():
        return ""
    try:
        moved = date(int(text[:4]), int(text[4:6]), int(text[6:8])) + timedelta(days=days)
    except ValueError:
        return ""
    return moved.strftime("%Y%m%d")


def shift_datetime(value: str, days: int) -> str:
    """A DT value with its date part moved by ``days`` (time of day and zone kept)."""
    text = str(value).strip()
    moved = shift_date(text[:8], days)
    return moved + text[8:] if moved else ""


def _clean(elem_value: object, vr: str, days: int) -> object:
    if vr == "DA":
        return shift_date(str(elem_value), days)
    if vr == "DT":
        return shift_datetime(str(elem_value), days)
    return ""  # C on anything else: we know no safe cleaning, so it is emptied


def _replace_uids(value: object, keys: Keys) -> object:
    if value is None or value == "":
        return value
    if isinstance(value, str):
        return keys.uid(value)
    return [keys.uid(str(v)) for v in value]  # type: ignore[attr-defined]  # a MultiValue of UIDs


def _apply(ds: Dataset, keys: Keys, *, pseudonym: str, days: int, report: DeidReport) -> None:
    for elem in list(ds):
        if elem.tag.is_private:
            del ds[elem.tag]
            report.private_removed += 1
            continue
        keyword = elem.keyword or keyword_for_tag(elem.tag)
        if elem.tag.group & 0xFF00 == 0x6000:  # overlay groups (60xx): removed whatever the element
            del ds[elem.tag]
            report.note(X, f"Overlay{elem.tag.element:04X}")
            continue
        action = ACTIONS.get(keyword)
        if action is None:
            del ds[elem.tag]
            report.unlisted_removed.add(keyword or str(elem.tag))
            continue
        report.note(action, keyword)
        if action is X:
            del ds[elem.tag]
        elif action is Z:
            elem.value = None if elem.VR == "SQ" else ""
        elif action is D:
            elem.value = pseudonym
        elif action is C:
            elem.value = _clean(elem.value, elem.VR, days)
        elif action is U:
            elem.value = _replace_uids(elem.value, keys)
        elif elem.VR == "SQ":  # K on a sequence: its items are de-identified by the same table
            for item in elem.value:
                _apply(item, keys, pseudonym=pseudonym, days=days, report=report)


def _code_item(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = "DCM"
    item.CodeMeaning = meaning
    return item


def deidentify(ds: Dataset, keys: Keys, *, patient_key: str) -> DeidReport:
    """De-identify ``ds`` in place for the patient ``patient_key`` (their original PatientID).

    Applies ``ACTIONS`` (unlisted and private attributes removed), then records the method:
    PatientIdentityRemoved YES, DeidentificationMethod, DeidentificationMethodCodeSequence (113100,
    113107) and LongitudinalTemporalInformationModified MODIFIED. The file meta is rebuilt with the new
    SOP Instance UID. BurnedInAnnotation is kept as the source states it (the caller decides what to do
    with YES or with an absent value).
    """
    report = DeidReport()
    pseudonym = keys.pseudonym(patient_key)
    days = keys.date_offset_days(patient_key)
    _apply(ds, keys, pseudonym=pseudonym, days=days, report=report)
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = list(METHOD_VALUES)
    ds.DeidentificationMethodCodeSequence = Sequence([_code_item(*BASIC_PROFILE_CODE),
                                                      _code_item(*MODIFIED_DATES_CODE)])
    ds.LongitudinalTemporalInformationModified = "MODIFIED"
    old_meta = getattr(ds, "file_meta", None)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    transfer = old_meta.get("TransferSyntaxUID") if old_meta is not None else None
    meta.TransferSyntaxUID = transfer or UID("1.2.840.10008.1.2.1")
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    ds.file_meta = meta
    return report


def burned_in_annotation(ds: Dataset) -> str:
    """``YES``, ``NO`` or ``unknown`` (the attribute is absent: nobody has said)."""
    value = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
    return value if value in ("YES", "NO") else "unknown"
