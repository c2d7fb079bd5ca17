"""De-identification rules, on single data sets: the action table, UIDs, pseudonyms, dates, the record."""

from __future__ import annotations

import re

import pytest
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence

from review.decisions import REJECT_REASONS
from training.deidentify import ACTIONS, DATE_SHIFT_DAYS, Action, Keys, deidentify, shift_date, shift_datetime
from training.snapshot import REJECT_REASON_CODES, reason_code

UID_RE = re.compile(r"^(0|[1-9]\d*)(\.(0|[1-9]\d*))+$")


def _dataset(study: str = "1.2.3.4", sop: str = "1.2.3.4.5.6", date: str = "20200115") -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = study + ".1"
    ds.FrameOfReferenceUID = study + ".2"
    ds.PatientName = "Nguyễn^Văn Canary"
    ds.PatientID = "CANARY-42"
    ds.PatientBirthDate = "19580317"
    ds.PatientAge = "066Y"
    ds.StudyDate = date
    ds.AcquisitionDateTime = date + "101500.000000+0700"
    ds.StudyTime = "101500"
    ds.InstitutionName = "Benh vien Canary"
    ds.StudyDescription = "CANARY DESCRIPTION"
    ds.AccessionNumber = "ACC-CANARY"
    ds.Modality = "CT"
    ds.ImagePositionPatient = [-100, -100, -150]
    ds.add_new(0x00091001, "LO", "hidden")  # private, no creator (still private)
    block = ds.private_block(0x0011, "ACME", create=True)
    block.add_new(0x01, "LO", "CANARY PRIVATE")
    ds.add_new(0x00181030, "LO", "protocol")  # ProtocolName: X
    ds.add_new(0x00400254, "LO", "step description")  # PerformedProcedureStepDescription: X
    ds.add_new(0x00080081, "ST", "Street 1")  # InstitutionAddress
    ds.add_new(0x00091002, "LO", "more private")
    ds.ReferencedImageSequence = Sequence([Dataset()])
    ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID = "1.2.3.9"
    ds.AnatomicRegionSequence = Sequence([Dataset()])
    ds.AnatomicRegionSequence[0].CodeValue = "T-D3000"
    ds.AnatomicRegionSequence[0].CodeMeaning = "Chest"
    ds.AnatomicRegionSequence[0].add_new(0x00100010, "PN", "Nested^Name")
    ds.add_new(0x00189346, "SQ", Sequence())  # CTDIPhantomTypeCodeSequence: not in the table, removed
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    ds.file_meta.SourceApplicationEntityTitle = "CANARYAE"
    return ds


def test_the_action_table_names_real_attributes_with_profile_actions() -> None:
    for keyword, action in ACTIONS.items():
        assert tag_for_keyword(keyword) is not None, keyword
        assert isinstance(action, Action)
    # What a radiologist or a registry would call identifying is never kept.
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "InstitutionName", "StudyDescription",
                    "SeriesDescription", "ImageComments", "AccessionNumber", "ReferringPhysicianName",
                    "OperatorsName", "OtherPatientIDs", "PatientAddress", "StationName", "DeviceSerialNumber"):
        assert ACTIONS[keyword] in (Action.DUMMY, Action.ZERO, Action.REMOVE), keyword
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID"):
        assert ACTIONS[keyword] is Action.UID
    assert ACTIONS["SOPClassUID"] is Action.KEEP and ACTIONS["ImagePositionPatient"] is Action.KEEP


def test_reason_codes_follow_the_review_pages() -> None:
    assert set(REJECT_REASON_CODES) == set(REJECT_REASONS)
    assert reason_code("vessel") == "vessel"
    assert reason_code("other: the patient Mr CANARY said so") == "other"
    assert reason_code("scar: old TB") == "scar"
    assert reason_code("") == "unspecified"
    assert reason_code("free text only") == "other"


def test_deidentify_applies_the_table() -> None:
    keys = Keys(b"k" * 32)
    ds = _dataset()
    report = deidentify(ds, keys, patient_key="CANARY-42")
    pseudonym = keys.pseudonym("CANARY-42")
    assert str(ds.PatientName) == pseudonym and ds.PatientID == pseudonym
    assert ds.PatientBirthDate == "" and "PatientAge" not in ds
    assert "InstitutionName" not in ds and "StudyDescription" not in ds and "ProtocolName" not in ds
    assert ds.AccessionNumber == ""
    assert not any(elem.tag.is_private for elem in ds)
    assert report.private_removed == 4  # (0009,1001), (0009,1002), creator (0011,0010) and (0011,1001)
    assert "ReferencedImageSequence" not in ds
    assert "CTDIPhantomTypeCodeSequence" in report.unlisted_removed and "InstitutionAddress" not in ds
    # A kept sequence is de-identified by the same table inside.
    assert ds.AnatomicRegionSequence[0].CodeValue == "T-D3000" and "PatientName" in ds.AnatomicRegionSequence[0]
    assert str(ds.AnatomicRegionSequence[0].PatientName) == pseudonym
    # UIDs: new, valid, consistent; the SOP class is kept.
    for kw, old in (("StudyInstanceUID", "1.2.3.4"), ("SeriesInstanceUID", "1.2.3.4.1"),
                    ("FrameOfReferenceUID", "1.2.3.4.2"), ("SOPInstanceUID", "1.2.3.4.5.6")):
        new = str(ds[kw].value)
        assert new == keys.uid(old) and new != old and UID_RE.match(new) and len(new) <= 64
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert "SourceApplicationEntityTitle" not in ds.file_meta
    # Dates shifted by the patient's offset, times kept, geometry kept.
    days = keys.date_offset_days("CANARY-42")
    assert ds.StudyDate == shift_date("20200115", days) != "20200115"
    assert ds.AcquisitionDateTime == shift_date("20200115", days) + "101500.000000+0700"
    assert ds.StudyTime == "101500" and [float(v) for v in ds.ImagePositionPatient] == [-100, -100, -150]
    # The record of what was done.
    assert ds.PatientIdentityRemoved == "YES" and ds.LongitudinalTemporalInformationModified == "MODIFIED"
    assert [c.CodeValue for c in ds.DeidentificationMethodCodeSequence] == ["113100", "113107"]
    assert all(c.CodingSchemeDesignator == "DCM" for c in ds.DeidentificationMethodCodeSequence)
    assert all(len(v) <= 64 for v in ds.DeidentificationMethod)


def test_keys_are_consistent_within_a_secret_and_unlinkable_across() -> None:
    a, b = Keys(b"a" * 32), Keys(b"b" * 32)
    assert a.pseudonym("P1") == a.pseudonym("P1") != a.pseudonym("P2")
    assert a.pseudonym("P1") != b.pseudonym("P1")
    assert a.uid("1.2.3") == a.uid("1.2.3 ") != b.uid("1.2.3")
    offsets = [a.date_offset_days(f"P{n}") for n in range(200)]
    lo, hi = DATE_SHIFT_DAYS
    assert all(-hi <= d <= -lo for d in offsets) and len(set(offsets)) > 50
    assert a.reader("lan") != a.reader("binh") and "lan" not in a.reader("lan")


def test_two_studies_of_a_patient_keep_their_interval() -> None:
    keys = Keys(b"c" * 32)
    first, second = _dataset(date="20190611"), _dataset(study="1.2.3.5", sop="1.2.3.5.1", date="20200115")
    deidentify(first, keys, patient_key="CANARY-42")
    deidentify(second, keys, patient_key="CANARY-42")
    from datetime import date

    def as_date(v: str) -> date:
        return date(int(v[:4]), int(v[4:6]), int(v[6:]))

    assert (as_date(second.StudyDate) - as_date(first.StudyDate)).days == (date(2020, 1, 15) - date(2019, 6, 11)).days
    assert first.PatientID == second.PatientID


@pytest.mark.parametrize(("value", "days", "expected"), [
    ("20200301", -1, "20200229"), ("20200101", -30, "20191202"), ("", -5, ""), ("2020", -5, ""),
    ("20201340", -1, ""),
])
def test_shift_date(value: str, days: int, expected: str) -> None:
    assert shift_date(value, days) == expected


def test_shift_datetime_keeps_time_and_zone() -> None:
    assert shift_datetime("20200301123000.5+0700", -1) == "20200229123000.5+0700"
