"""Canary PHI: identities planted in the source studies appear nowhere in an exported snapshot (DICOM, npz,
JSON, markdown), pseudonyms are consistent within a snapshot and differ between snapshots, dates are
shifted consistently, coordinates stay valid in the de-identified frame."""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import date
from pathlib import Path

import numpy as np
import pydicom
import pytest

from inference.dicom_series import load_series
from review import decisions
from review.decisions import Actor
from tamsoat.core.db import Database
from tamsoat.core.domain import Decision, Role
from tamsoat.core.settings import Settings
from tamsoat.core.tables import AuditEvent
from tamsoat.core.users import add_user
from tamsoat.research import export_dataset
from tamsoat.research_demo import Identity, stamp_identity
from tests.research_support import canaries_found, seed_ready_study
from training.snapshot import read_snapshot, verify_snapshot

ALICE = dict(patient_name="Nguyễn^Văn Canarybird", patient_id="CANARY-ID-4711", birth_date="19580317",
             institution="Bệnh viện Chợ Rẫy Canarytown", study_description="CANARY STUDY DESCRIPTION",
             series_description="CANARY SERIES DESCRIPTION", image_comments="CANARY IMAGE COMMENT",
             accession="ACC-CANARY-99", referring="Dr^Canaryref", operators="Op^Canaryop",
             other_ids="CANARY-OTHER-77", address="12 Canary Street Hanoi", private_text="CANARY PRIVATE PAYLOAD")
BOB = {**ALICE, "patient_name": "TRAN^CANARYBETA", "patient_id": "CANARY-ID-0815", "birth_date": "19610203"}
# More than the largest date shift (395 days) apart, so that no shifted date can land on another canary date
# by chance (with 2019-06-11 / 2020-01-15 / 2020-03-02 it did, about once in 60 runs).
DATES = {"alice-1": "20170611", "alice-2": "20200115", "bob": "20210802"}
CANARIES = [
    "Nguyễn", "Văn Canarybird", "Canarybird", "Nguyen", "CANARYBETA", "TRAN^CANARYBETA",
    "CANARY-ID-4711", "CANARY-ID-0815", "CANARY-OTHER-77", "ACC-CANARY-99",
    "19580317", "1958-03-17", "19610203",
    "Canarytown", "Chợ Rẫy", "CANARY STUDY DESCRIPTION", "CANARY SERIES DESCRIPTION", "CANARY IMAGE COMMENT",
    "CANARY PRIVATE PAYLOAD", "Canary Street", "Canaryref", "Canaryop",
    "CANARY REASON TEXT", "CANARY NOTE", "canaryreader",
    *DATES.values(),
]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    from tamsoat.core.db import migrate

    tmp = tmp_path_factory.mktemp("phi")
    settings = Settings(home=tmp / "home", institution="Bệnh viện Chợ Rẫy Canarytown")
    migrate(settings.db_url)
    db = Database(settings.db_url)
    with db.session() as s:
        add_user(s, "canaryreader", Role.RADIOLOGIST)
        add_user(s, "res", Role.RESEARCHER)
    spool, work = settings.spool_path, tmp / "work"
    originals: dict[str, dict[str, str]] = {}
    truths = {}
    reader = Actor("canaryreader", "10.0.0.9")
    for n, (key, ident) in enumerate((("alice-1", ALICE), ("alice-2", ALICE), ("bob", BOB),
                                      ("rejected", ALICE), ("burned", BOB))):
        identity = Identity(**ident, study_date=DATES.get(key, "20200401"))
        uid, truth, ids = seed_ready_study(db, spool, work, identity, seed=300 + n)
        with db.session() as s:
            study = decisions.get_study(s, uid)
            if key == "rejected":
                decisions.reject_study(s, study, reader, reason="CANARY NOTE: wrong series")
                continue
            decisions.decide(s, study, ids[0], Decision.ACCEPT, reader, auto_claim=True)
            decisions.edit(s, study, ids[1], reader, center_mm=None, diameter_mm=round(truth[1].diameter_mm, 1),
                           nodule_type="part_solid", auto_claim=True)
            decisions.decide(s, study, ids[2], Decision.REJECT, reader, reason="other: CANARY REASON TEXT Nguyễn",
                             auto_claim=True)
            for t in truth[2:]:
                decisions.add(s, study, reader, center_mm=t.center_mm, diameter_mm=round(t.diameter_mm, 1),
                              nodule_type="solid", auto_claim=True)
            decisions.sign(s, study, reader)
            analysis = decisions.current_analysis(s, uid)
            assert analysis is not None
            paths = [spool / i.path for i in study.instances]
        if key == "burned":
            for p in paths:  # a series that says it carries burned-in text must not be exported
                ds = pydicom.dcmread(p)
                ds.BurnedInAnnotation = "YES"
                ds.save_as(p)
        ds = pydicom.dcmread(paths[0], stop_before_pixels=True)
        originals[key] = {"study": uid, "series": str(ds.SeriesInstanceUID), "frame": str(ds.FrameOfReferenceUID),
                          "sop": str(ds.SOPInstanceUID)}
        truths[key] = truth
    first = export_dataset(db, settings, "cli:res", tmp / "out")
    second = export_dataset(db, settings, "cli:res", tmp / "out", name="second-export")
    return {"db": db, "first": first, "second": second, "originals": originals, "truths": truths}


def test_no_canary_anywhere_in_the_snapshot(exported: dict[str, object]) -> None:
    originals = exported["originals"]
    assert isinstance(originals, dict)
    uids = [v for o in originals.values() for v in o.values()]
    for summary in (exported["first"], exported["second"]):
        files = [p for p in summary.path.rglob("*") if p.is_file()]  # type: ignore[attr-defined]
        kinds = {p.suffix for p in files}
        assert {".dcm", ".npz", ".json", ".md"} <= kinds
        assert canaries_found(files, CANARIES) == []
        assert canaries_found(files, uids) == []  # no source UID either


def test_planted_canaries_are_found_in_the_source(exported: dict[str, object], tmp_path: Path) -> None:
    """The search works: the same canaries are found in a source file."""
    db = exported["db"]
    assert isinstance(db, Database)
    probe = tmp_path / "probe.dcm"
    src = next(Path(db.url.removeprefix("sqlite:///")).parent.joinpath("spool").rglob("*.dcm"))
    shutil.copy(src, probe)
    stamp_identity([probe], Identity(**ALICE))
    found = {c for _, c in canaries_found([probe], CANARIES)}
    assert {"Nguyễn", "CANARY-ID-4711", "19580317", "Canarytown", "CANARY PRIVATE PAYLOAD",
            "CANARY IMAGE COMMENT"} <= found


def test_pseudonyms_dates_and_frames(exported: dict[str, object]) -> None:
    first = read_snapshot(exported["first"].path)  # type: ignore[attr-defined]
    second = read_snapshot(exported["second"].path)  # type: ignore[attr-defined]
    counts = first.manifest["counts"]
    assert counts["cases"] == 3 and counts["patients"] == 2
    assert counts["excluded"] == {"study_rejected_for_ai_review": 1, "burned_in_annotation": 1}
    labels = json.loads((first.path / "labels.json").read_text())["cases"]
    alice1, alice2, bob = labels  # signed in this order
    assert alice1["patient"] == alice2["patient"] != bob["patient"]
    assert alice1["patient"].startswith("ANON-")
    others = {c["patient"] for c in json.loads((second.path / "labels.json").read_text())["cases"]}
    assert not others & {alice1["patient"], bob["patient"]}  # a new secret: no link between snapshots

    def d(v: str) -> date:
        return date(int(v[:4]), int(v[4:6]), int(v[6:]))

    assert (d(alice2["study_date"]) - d(alice1["study_date"])).days == (d(DATES["alice-2"]) - d(DATES["alice-1"])).days
    for case, key in ((alice1, "alice-1"), (bob, "bob")):
        assert 30 <= (d(DATES[key]) - d(case["study_date"])).days <= 395
    # Labels: the coded reason only; readers pseudonymous; every origin present.
    findings = [f for c in labels for f in c["findings"]]
    assert {f["origin"] for f in findings} == {"ai_accepted", "ai_edited", "radiologist_added", "ai_rejected"}
    assert {f["reason"] for f in findings if f["label"] == "hard_negative"} == {"other"}
    assert {f["reader"] for f in findings} == {findings[0]["reader"]} and findings[0]["reader"].startswith("reader-")


def test_dicom_series_are_deidentified_and_geometry_is_kept(exported: dict[str, object]) -> None:
    snap = read_snapshot(exported["first"].path)  # type: ignore[attr-defined]
    labels = json.loads((snap.path / "labels.json").read_text())["cases"]
    for case, entry in zip(snap.cases, labels, strict=True):
        files = sorted((snap.path / entry["dicom"]).glob("*.dcm"))
        ds = pydicom.dcmread(files[0])
        assert ds.PatientIdentityRemoved == "YES"
        assert [c.CodeValue for c in ds.DeidentificationMethodCodeSequence] == ["113100", "113107"]
        assert ds.StudyInstanceUID == entry["study_instance_uid"]
        assert ds.FrameOfReferenceUID == entry["frame_of_reference_uid"]
        assert ds.PatientID == entry["patient"] and ds.StudyDate == entry["study_date"]
        assert "InstitutionName" not in ds and "ImageComments" not in ds and "SeriesDescription" not in ds
        assert not any(e.tag.is_private for e in ds)
        # The de-identified series makes the same volume (same frame, same voxels) as the npz.
        series = load_series(files)
        volume = case.load_volume()
        assert np.allclose(series.affine, volume.affine) and np.array_equal(series.array, volume.array)
        for lab in case.labels:
            ijk = volume.patient_to_index(lab.center_mm)
            assert np.all(ijk >= -0.5) and np.all(ijk <= np.array(volume.array.shape[::-1]) - 0.5), lab
    truths = exported["truths"]
    assert isinstance(truths, dict)
    # The added nodules sit where the phantom put them, in the de-identified frame too.
    added = [lab for lab in snap.cases[0].labels if lab.origin == "radiologist_added"]
    assert added and all(any(np.allclose(lab.center_mm, t.center_mm, atol=1e-2) for t in truths["alice-1"])
                         for lab in added)


def test_manifest_lists_every_file_with_its_hash(exported: dict[str, object], tmp_path: Path) -> None:
    path = exported["second"].path  # type: ignore[attr-defined]
    assert verify_snapshot(path) == []
    manifest = json.loads((path / "manifest.json").read_text())
    assert set(manifest["files"]) == {p.relative_to(path).as_posix() for p in path.rglob("*")
                                      if p.is_file() and p.name != "manifest.json"}
    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    victim = copy / "labels.json"
    victim.write_text(victim.read_text().replace("positive", "positivE", 1))
    (copy / "extra.txt").write_text("x")
    problems = verify_snapshot(copy)
    assert any("labels.json has changed" in p for p in problems) and any("extra.txt" in p for p in problems)
    datasheet = (path / "datasheet.md").read_text()
    for section in ("## Source", "## Counts", "## Label definitions", "## De-identification", "## Intended use"):
        assert section in datasheet


def test_export_is_audited_without_phi(exported: dict[str, object]) -> None:
    db = exported["db"]
    assert isinstance(db, Database)
    with db.session() as s:
        events = s.query(AuditEvent).filter(AuditEvent.action == "dataset.exported").all()
        assert [e.target for e in events] == [exported["first"].snapshot_id, "second-export"]  # type: ignore[attr-defined]
        assert all(e.actor == "cli:res" and e.detail["cases"] == 3 for e in events)
        blob = json.dumps([e.detail for e in events])
    assert not any(c.lower() in blob.lower() for c in CANARIES)


def test_exported_dicom_passes_dciodvfy(exported: dict[str, object]) -> None:
    tool = shutil.which("dciodvfy")
    if tool is None:
        pytest.skip("dciodvfy (dicom3tools) is not installed")
    path = exported["first"].path  # type: ignore[attr-defined]
    f = sorted(path.rglob("*.dcm"))[0]
    out = subprocess.run([tool, str(f)], capture_output=True, text=True)
    errors = [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]
    assert errors == []
