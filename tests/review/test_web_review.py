"""The review flow through the pages' JSON endpoints: claims, decisions, edits, added findings, sign-off,
and what comes out: the signed SR, the FHIR DiagnosticReport, an IOCM rejection note; monitoring and audit."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient

from review import lungrads
from review.imaging import SeriesGeometry
from tamsoat.app import create_app
from tamsoat.core.domain import StudyState
from tamsoat.core.tables import AuditEvent, Finding, Job, OutboxItem, Report, Study
from tamsoat.tasks import TaskContext, report_preliminary, report_study
from tests.review.checks import dciodvfy_errors, read_fhir, read_sr
from tests.review.conftest import Web, make_settings
from tests.review.seed import login, seed_study


def test_lung_rads_v2022_size_thresholds() -> None:
    assert [lungrads.category_for(d) for d in (3, 5.9, 6, 7.9, 8, 14.9, 15, 40)] == [
        "2", "2", "3", "3", "4A", "4A", "4B", "4B"]
    assert lungrads.category_for(29.9, "ground_glass") == "2" and lungrads.category_for(30, "ground_glass") == "3"
    assert lungrads.category_for(5.9, "part_solid") == "2" and lungrads.category_for(6, "part_solid") == "3"
    assert lungrads.suggest([]) == "1"
    assert lungrads.suggest([(7.0, "solid"), (9.0, "ground_glass"), (8.1, "")]) == "4A"


def test_geometry_mm_to_pixel_round_trip(web: Web) -> None:
    study = seed_study(web.db, web.spool, slices=24)
    geometry = SeriesGeometry.from_files(study.paths)
    ds = pydicom.dcmread(study.paths[7], stop_before_pixels=True)
    assert len(geometry.slices) == 24 and geometry.rows == 512
    point = geometry.to_patient(7, 100.0, 200.0)
    ipp = np.asarray([float(v) for v in ds.ImagePositionPatient])
    spacing = [float(v) for v in ds.PixelSpacing]
    assert np.allclose(point, ipp + np.asarray([100.0 * spacing[1], 200.0 * spacing[0], 0.0]))
    col, row, k = geometry.to_pixel(point)
    assert (round(col, 6), round(row, 6), round(k, 6)) == (100.0, 200.0, 7.0)


def _h(csrf: str) -> dict[str, str]:
    return {"X-CSRF-Token": csrf}


def test_claims_keep_two_radiologists_apart(web: Web) -> None:
    study = seed_study(web.db, web.spool, slices=24)
    lan, binh, admin = (TestClient(web.app) for _ in range(3))
    csrf_lan, csrf_binh, csrf_admin = login(lan, "lan"), login(binh, "binh"), login(admin, "admin")
    assert lan.get(f"/studies/{study.uid}").status_code == 200  # claim on open
    state = binh.get(f"/studies/{study.uid}/state").json()
    assert state["study"]["claimed_by"] == "lan" and state["editable"] is False
    assert "lan" in binh.get("/").text  # the claim is visible on the worklist
    r = binh.post(f"/studies/{study.uid}/findings/{study.finding_ids[0]}/accept", headers=_h(csrf_binh))
    assert r.status_code == 409 and r.json()["code"] == "claimed_by_other"
    assert binh.post(f"/studies/{study.uid}/release", headers=_h(csrf_binh)).status_code == 409
    # An admin breaks the claim; then the other radiologist can take it.
    assert admin.post(f"/studies/{study.uid}/claim/break", headers=_h(csrf_admin)).status_code == 200
    assert binh.post(f"/studies/{study.uid}/claim", headers=_h(csrf_binh)).json()["study"]["claimed_by"] == "binh"
    r = lan.post(f"/studies/{study.uid}/findings/{study.finding_ids[0]}/accept", headers=_h(csrf_lan))
    assert r.status_code == 409
    # Released explicitly, then free again; the integration API respects a claim too.
    assert binh.post(f"/studies/{study.uid}/release", headers=_h(csrf_binh)).json()["study"]["claimed_by"] == ""
    with web.db.session() as s:
        actions = [e.action for e in s.query(AuditEvent).filter(AuditEvent.target == study.uid)]
    assert {"study.claimed", "study.claim_broken", "study.released", "study.viewed"} <= set(actions)


def test_review_sign_report_fhir_and_monitoring(web: Web, client: TestClient) -> None:
    study = seed_study(web.db, web.spool, slices=40)
    other = seed_study(web.db, web.spool, seed=5, slices=24, patient_id="VN-0107", model=("lung-nodule-phantom",
                                                                                           "0.2.0"))
    csrf = login(client, "lan")
    uid, ids = study.uid, study.finding_ids
    state = client.get(f"/studies/{uid}").status_code and client.get(f"/studies/{uid}/state").json()
    assert state["editable"] and len(state["findings"]) == 4 and state["series"]["count"] == 40
    sl = client.get(f"/studies/{uid}/slices/5")
    assert sl.status_code == 200 and len(sl.content) == 512 * 512 * 2
    hu = np.frombuffer(sl.content, dtype="<i2")
    assert hu.min() < -900 and hu.max() > 0  # air and tissue in Hounsfield units
    assert client.post(f"/studies/{uid}/sign", headers=_h(csrf), json={}).json()["code"] == "findings_undecided"

    assert client.post(f"/studies/{uid}/findings/{ids[0]}/accept", headers=_h(csrf)).status_code == 200
    r = client.post(f"/studies/{uid}/findings/{ids[3]}/reject", headers=_h(csrf), json={"reason": "vessel"})
    assert r.status_code == 200
    geometry = SeriesGeometry.from_files(study.paths)
    edit_to = {"slice": 12, "column": 300.0, "row": 210.0}
    r = client.post(f"/studies/{uid}/findings/{ids[1]}/edit", headers=_h(csrf),
                    json={"center": edit_to, "diameter_mm": 11.0, "nodule_type": "part_solid"})
    assert r.status_code == 200, r.text
    assert client.post(f"/studies/{uid}/findings/{ids[2]}/accept", headers=_h(csrf)).status_code == 200
    missed = study.missed
    assert missed is not None
    col, row, k = geometry.to_pixel(missed.center_mm)
    r = client.post(f"/studies/{uid}/findings", headers=_h(csrf), json={
        "center": {"slice": round(k), "column": col, "row": row}, "diameter_mm": 8.0, "nodule_type": "solid"})
    assert r.status_code == 200
    added = r.json()["findings"][-1]
    assert added["source"] == "radiologist" and added["decision"] == "accept"
    # Bad input is refused with a clear error.
    bad = client.post(f"/studies/{uid}/findings", headers=_h(csrf), json={
        "center": {"slice": 999, "column": 1, "row": 1}, "diameter_mm": 8.0})
    assert bad.status_code == 422 and "slice" in bad.json()["message"]
    assert client.post(f"/studies/{uid}/findings/{ids[0]}/edit", headers=_h(csrf),
                       json={"diameter_mm": 500}).status_code == 422

    state = client.post(f"/studies/{uid}/sign", headers=_h(csrf), json={"lung_rads": "4A"}).json()
    assert state["study"]["state"] == "signed" and state["study"]["lung_rads"] == "4A"
    assert state["study"]["claimed_by"] == "" and state["editable"] is False
    with web.db.session() as s:
        assert [j.kind for j in s.query(Job)] == ["report_study"]
        findings = {f.id: f for f in s.query(Finding)}
        edited = findings[ids[1]]
        assert edited.edited_by == "lan" and edited.ai_values and edited.ai_values["diameter_mm"] != 11.0
        assert np.allclose((edited.center_x_mm, edited.center_y_mm, edited.center_z_mm),
                           geometry.to_patient(12, 300.0, 210.0))

    report_study(TaskContext(settings=web.settings, db=web.db), uid, {})
    with web.db.session() as s:
        reports = s.query(Report).filter_by(study_instance_uid=uid).all()
        uids = {fid: findings[fid].tracking_uid for fid in ids}
        added_uid = s.query(Finding).filter_by(source="radiologist").one().tracking_uid
    assert [r.kind for r in reports] == ["sr"]
    path = Path(reports[0].path)
    assert dciodvfy_errors(path) == []
    ds, groups, root_comments = read_sr(path)
    assert ds.VerificationFlag == "VERIFIED" and str(ds.VerifyingObserverSequence[0].VerifyingObserverName) == \
        "Nguyen^Lan"
    by_uid = {g.tracking_uid: g for g in groups}
    assert set(by_uid) == {uids[ids[0]], uids[ids[1]], uids[ids[2]], added_uid}  # the rejected one is absent
    accepted = by_uid[uids[ids[0]]]
    assert accepted.person is None and accepted.has_algorithm and "Certainty of Finding" in accepted.measurements
    edited_g = by_uid[uids[ids[1]]]
    assert edited_g.person == "Nguyen^Lan" and not edited_g.has_algorithm
    assert edited_g.measurements == {"Diameter": 11.0} and edited_g.comments == ["Nodule type: part-solid"]
    added_g = by_uid[added_uid]
    assert added_g.person == "Nguyen^Lan" and "Certainty of Finding" not in added_g.measurements
    assert root_comments == ["Lung-RADS v2022 category 4A"]

    fhir = list(web.settings.fhir_path.rglob("*.json"))
    assert len(fhir) == 1
    diag, observations = read_fhir(fhir[0])
    assert diag["status"] == "final" and diag["identifier"][0]["value"] == f"urn:oid:{ds.SOPInstanceUID}"
    assert len(observations) == 5  # four nodules + the Lung-RADS category
    assert any(o.get("valueCodeableConcept", {}).get("text") == "4A" for o in observations)

    # The other study: every AI finding rejected -> signed with no findings ("Nodule: Absent").
    client.get(f"/studies/{other.uid}")
    for fid in other.finding_ids:
        client.post(f"/studies/{other.uid}/findings/{fid}/reject", headers=_h(csrf), json={"reason": "artefact"})
    client.post(f"/studies/{other.uid}/sign", headers=_h(csrf), json={"lung_rads": "1"})
    assert "no_findings" in client.get("/?state=no_findings").text

    # Monitoring: per model version, what radiologists did.
    client.cookies.clear()
    login(client, "admin")
    rows = {r["version"]: r for r in client.get("/monitoring.json").json()}
    v1 = rows["0.1.0"]
    assert (v1["ai"], v1["accepted"], v1["edited"], v1["rejected"], v1["added"]) == (4, 2, 1, 1, 1)
    assert v1["reasons"] == {"vessel": 1}
    assert rows["0.2.0"]["rejected"] == 4 and rows["0.2.0"]["reasons"] == {"artefact": 4}
    page = client.get("/monitoring").text
    assert 'data-k="edited">1<' in page


def test_preliminary_sr_is_withdrawn_with_a_rejection_note(db: object, tmp_path: Path) -> None:
    from tamsoat.core.db import Database
    from tamsoat.core.settings import Destination
    from tests.review.seed import add_users

    assert isinstance(db, Database)
    settings = make_settings(tmp_path, destinations=[Destination(name="pacs", ae_title="PACS", host="127.0.0.1",
                                                                 port=104)], preliminary_sr=True)
    add_users(db)
    app = create_app(db, settings=settings)
    study = seed_study(db, settings.spool_path, slices=24)
    ctx = TaskContext(settings=settings, db=db)
    report_preliminary(ctx, study.uid, {})
    with db.session() as s:
        prelim = s.query(Report).one()
        assert prelim.kind == "sr-preliminary"
    ds = pydicom.dcmread(prelim.path)
    assert ds.VerificationFlag == "UNVERIFIED" and dciodvfy_errors(Path(prelim.path)) == []

    client = TestClient(app)
    csrf = login(client, "lan")
    client.get(f"/studies/{study.uid}")
    r = client.post(f"/studies/{study.uid}/reject", headers=_h(csrf), json={"reason": ""})
    assert r.status_code == 422
    r = client.post(f"/studies/{study.uid}/reject", headers=_h(csrf), json={"reason": "wrong series: not a chest CT"})
    assert r.status_code == 200 and r.json()["study"]["state"] == "rejected"
    report_study(ctx, study.uid, {})
    with db.session() as s:
        kinds = sorted((r.kind, r.sop_class_uid) for r in s.query(Report))
        kos_row = s.query(Report).filter_by(kind="kos").one()
        assert s.query(OutboxItem).count() == 2  # the preliminary SR and the rejection note, to the PACS
        assert s.get(Study, study.uid).state == StudyState.REJECTED.value
    assert kinds == [("kos", "1.2.840.10008.5.1.4.1.1.88.59"), ("sr-withdrawn", "1.2.840.10008.5.1.4.1.1.88.34")]
    kos_path = Path(kos_row.path)
    assert dciodvfy_errors(kos_path) == []
    kos = pydicom.dcmread(kos_path)
    assert kos.ConceptNameCodeSequence[0].CodeValue == "113001"
    referenced = [i.ReferencedSOPInstanceUID for series in kos.CurrentRequestedProcedureEvidenceSequence
                  for i in series.ReferencedSeriesSequence[0].ReferencedSOPSequence]
    assert referenced == [ds.SOPInstanceUID]
    import highdicom as hd

    assert hd.ko.KeyObjectSelectionDocument.from_dataset(kos).SOPInstanceUID == kos.SOPInstanceUID


def test_audit_page_and_exports(web: Web, client: TestClient) -> None:
    study = seed_study(web.db, web.spool, slices=24)
    login(client, "lan")
    client.get(f"/studies/{study.uid}")
    client.cookies.clear()
    login(client, "admin")
    page = client.get("/admin/audit?actor=lan").text
    assert "study.viewed" in page and study.uid in page and "testclient" in page  # who, what, from where
    rows = list(csv.reader(io.StringIO(client.get("/admin/audit.csv").text)))
    assert rows[0] == ["id", "at", "actor", "action", "target", "remote", "detail"]
    assert any(r[2] == "lan" and r[3] == "study.viewed" and r[4] == study.uid for r in rows[1:])
    events = client.get(f"/admin/audit.json?target={study.uid}").json()
    assert {e["action"] for e in events} >= {"study.viewed", "study.claimed"}
    assert client.get("/admin/audit.json?since=2001-99-01").status_code == 422


@pytest.mark.parametrize("state", ["todo", "all", "new", "signed"])
def test_worklist_filters_and_order(web: Web, client: TestClient, state: str) -> None:
    small = seed_study(web.db, web.spool, seed=5, slices=24, patient_id="VN-0001")
    with web.db.session() as s:  # make one study less suspicious: all its findings small
        for f in s.query(Finding).filter(Finding.id.in_(small.finding_ids)):
            f.diameter_mm = 4.0
    big = seed_study(web.db, web.spool, seed=6, slices=24, patient_id="VN-0002", study_date_shift_days=40)
    login(client, "lan")
    html = client.get(f"/?state={state}").text
    if state in ("todo", "all", "new"):
        assert html.index(big.uid) < html.index(small.uid)  # 4B before 2
    else:
        assert big.uid not in html and small.uid not in html
    recent = client.get("/?state=all&date_from=" + __import__("datetime").date.today().isoformat()).text
    assert small.uid in recent and big.uid not in recent
    assert big.uid not in client.get("/?state=all&model=other:1").text
