"""The research API: who may export and change deployments, audits, background exports, shadow runs that
never reach the clinical API or reports, and promotion that the engine honours at the next study.

Models here are tiny ONNX graphs (tests/inference/factory_model.py), so every analysis takes a second.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid
from sqlalchemy import select, update

from review import decisions
from review.decisions import Actor
from tamsoat.app import create_app
from tamsoat.core import queue
from tamsoat.core.db import Database
from tamsoat.core.domain import Decision, JobKind, Role, StudyState
from tamsoat.core.settings import Settings
from tamsoat.core.tables import Analysis, AuditEvent, Finding, Job, ModelDeployment, Report
from tamsoat.core.users import add_user, create_token
from tamsoat.deployments import agreement
from tamsoat.jobs import run_job
from tamsoat.research_demo import Identity, close_received, receive, write_study
from tamsoat.tasks import TaskContext, analyze_study, report_study
from tests.inference.factory_model import threshold_model, write_model_folder
from tests.research_support import seed_ready_study

MODEL = "lung-nodule-phantom"
IDENT = Identity("TEST^PATIENT", "TP-1", study_date="20240102")


@dataclass
class Site:
    db: Database
    settings: Settings
    client: TestClient
    tokens: dict[str, str]

    def h(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}


@pytest.fixture
def site(db: Database, tmp_path: Path) -> Iterator[Site]:
    models = tmp_path / "models"
    # 0.1.0 marks bright voxels (> 0.55 of the window: soft tissue and nodules); 0.2.0 is stricter.
    write_model_folder(models, lambda p: threshold_model(p, level=0.55), version="0.1.0",
                       input={"patch_size": [64, 64, 64]}, output={"min_diameter_mm": 4.0})
    write_model_folder(models, lambda p: threshold_model(p, level=0.6), version="0.2.0",
                       input={"patch_size": [64, 64, 64]}, output={"min_diameter_mm": 4.0})
    settings = Settings(home=tmp_path / "home", models_dir=models, datasets_dir=tmp_path / "datasets",
                        inference_threads=1)
    tokens = {}
    with db.session() as s:
        for role in Role:
            add_user(s, role.value, role)
            tokens[role.value] = create_token(s, role.value)
    with TestClient(create_app(db, settings=settings)) as client:
        yield Site(db, settings, client, tokens)


def _signed_study(site: Site, seed: int) -> str:
    uid, truth, ids = seed_ready_study(site.db, site.settings.spool_path, site.settings.home / "in", IDENT, seed=seed)
    actor = Actor("radiologist", "")
    with site.db.session() as s:
        study = decisions.get_study(s, uid)
        decisions.decide(s, study, ids[0], Decision.ACCEPT, actor, auto_claim=True)
        decisions.decide(s, study, ids[1], Decision.ACCEPT, actor, auto_claim=True)
        decisions.decide(s, study, ids[2], Decision.REJECT, actor, reason="vessel", auto_claim=True)
        decisions.add(s, study, actor, center_mm=truth[2].center_mm, diameter_mm=7.0, nodule_type="solid",
                      auto_claim=True)
        decisions.sign(s, study, actor)
    return uid


def _audit(site: Site, action: str) -> list[AuditEvent]:
    with site.db.session() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)))


def test_only_researchers_and_admins_export(site: Site) -> None:
    _signed_study(site, 500)
    c = site.client
    assert c.post("/api/v1/datasets", json={}).status_code == 401
    for role in ("radiologist", "integration"):
        r = c.post("/api/v1/datasets", json={}, headers=site.h(role))
        assert r.status_code == 403 and r.json()["code"] == "forbidden", role
    assert _audit(site, "dataset.exported") == []
    r = c.post("/api/v1/datasets", json={"snapshot_name": "first"}, headers=site.h("researcher"))
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["state"] == "done" and body["counts"]["cases"] == 1 and body["counts"]["positives"] == 3
    assert (site.settings.datasets_path / "first" / "manifest.json").is_file()
    assert c.post("/api/v1/datasets", json={"snapshot_name": "first"}, headers=site.h("admin")).status_code == 409
    assert c.post("/api/v1/datasets", json={"since": "2999-01-01"}, headers=site.h("admin")).json()["counts"][
        "cases"] == 0
    events = _audit(site, "dataset.exported")
    assert (events[0].actor, events[0].target, events[0].detail["cases"]) == ("researcher", "first", 1)
    assert [e.actor for e in events] == ["researcher", "admin"]
    listed = c.get("/api/v1/datasets", headers=site.h("researcher")).json()
    assert {d["snapshot_id"] for d in listed} >= {"first"}
    assert c.get("/api/v1/datasets", headers=site.h("radiologist")).status_code == 403


def test_a_large_export_runs_as_a_job(site: Site) -> None:
    _signed_study(site, 501)
    r = site.client.post("/api/v1/datasets", json={"background": True, "snapshot_name": "bg"},
                         headers=site.h("researcher"))
    assert r.status_code == 202 and r.json() == {"snapshot_id": "bg", "state": "queued", "eligible_studies": 1}
    assert site.client.get("/api/v1/datasets/bg", headers=site.h("researcher")).json()["state"] == "queued"
    with site.db.session() as s:
        job = s.scalar(select(Job).where(Job.kind == JobKind.EXPORT_DATASET.value))
        assert job is not None
        claimed = queue.claim(s, "test", (JobKind.EXPORT_DATASET.value,))
        assert claimed is not None
        args = (claimed.id, claimed.kind, claimed.key, dict(claimed.payload))
    run_job(TaskContext(settings=site.settings, db=site.db), *args)
    done = site.client.get("/api/v1/datasets/bg", headers=site.h("researcher")).json()
    assert done["state"] == "done" and done["counts"]["cases"] == 1 and len(done["manifest_sha256"]) == 64
    assert [e.target for e in _audit(site, "dataset.exported")] == ["bg"]


def test_deployment_routes_are_admin_only_audited_and_reversible(site: Site) -> None:
    c = site.client
    listing = c.get("/api/v1/models", headers=site.h("researcher")).json()
    assert listing == [{"model_id": MODEL, "versions": ["0.1.0", "0.2.0"], "active_version": "0.2.0",
                        "pinned": False, "previous_version": "", "shadow_version": "", "updated_at": None,
                        "updated_by": ""}]
    assert c.get("/api/v1/models", headers=site.h("radiologist")).status_code == 403
    for role in ("researcher", "radiologist"):
        assert c.post(f"/api/v1/models/{MODEL}/promote", json={"version": "0.1.0"},
                      headers=site.h(role)).status_code == 403
        assert c.put(f"/api/v1/models/{MODEL}/shadow", json={"version": "0.1.0"},
                     headers=site.h(role)).status_code == 403
    r = c.post(f"/api/v1/models/{MODEL}/promote", json={"version": "0.1.0"}, headers=site.h("admin"))
    assert r.status_code == 200 and r.json()["active_version"] == "0.1.0" and r.json()["previous_version"] == "0.2.0"
    r = c.put(f"/api/v1/models/{MODEL}/shadow", json={"version": "0.2.0"}, headers=site.h("admin"))
    assert r.status_code == 200 and r.json()["shadow_version"] == "0.2.0"
    r = c.put(f"/api/v1/models/{MODEL}/shadow", json={"version": "0.1.0"}, headers=site.h("admin"))
    assert r.status_code == 409 and r.json()["code"] == "already_active"
    r = c.post(f"/api/v1/models/{MODEL}/promote", json={"version": "9.9.9"}, headers=site.h("admin"))
    assert r.status_code == 404 and r.json()["code"] == "model_not_found"
    r = c.post(f"/api/v1/models/{MODEL}/promote", json={"version": "0.2.0"}, headers=site.h("admin"))
    assert r.json()["active_version"] == "0.2.0" and r.json()["shadow_version"] == ""  # promoted from shadow
    r = c.post(f"/api/v1/models/{MODEL}/rollback", headers=site.h("admin"))
    assert r.status_code == 200 and r.json()["active_version"] == "0.1.0" and r.json()["previous_version"] == "0.2.0"
    with site.db.session() as s:
        actions = [(e.action, e.detail.get("version")) for e in s.scalars(
            select(AuditEvent).where(AuditEvent.action.like("model.%")).order_by(AuditEvent.id))]
    assert actions == [("model.deployment_pinned", "0.2.0"), ("model.promoted", "0.1.0"), ("model.shadow_set", "0.2.0"),
                       ("model.promoted", "0.2.0"), ("model.rolled_back", "0.1.0")]
    # A tampered model file cannot be promoted.
    onnx = site.settings.models_dir / MODEL / "0.2.0" / "model.onnx"
    onnx.write_bytes(onnx.read_bytes() + b"x")
    r = c.post(f"/api/v1/models/{MODEL}/promote", json={"version": "0.2.0"}, headers=site.h("admin"))
    assert r.status_code == 409 and r.json()["code"] == "model_integrity"


def _receive_study(site: Site, seed: int) -> str:
    paths, _ = write_study(site.settings.home / "in" / str(seed), IDENT, seed=seed)
    uid = receive(site.db, site.settings.spool_path, paths)
    close_received(site.db)
    return uid


def _run_queued(site: Site, ctx: TaskContext, kind: str) -> int:
    ran = 0
    while True:
        with site.db.session() as s:
            job = queue.claim(s, "test", (kind,))
            args = None if job is None else (job.id, job.kind, job.key, dict(job.payload))
        if args is None:
            return ran
        run_job(ctx, *args)
        ran += 1


def test_shadow_runs_are_stored_never_shown_and_promotion_reaches_the_engine(site: Site) -> None:
    c, admin = site.client, site.h("admin")
    ctx = TaskContext(settings=site.settings, db=site.db)
    assert c.post(f"/api/v1/models/{MODEL}/promote", json={"version": "0.1.0"}, headers=admin).status_code == 200
    assert c.put(f"/api/v1/models/{MODEL}/shadow", json={"version": "0.2.0"}, headers=admin).status_code == 200
    uid = _receive_study(site, 601)
    assert _run_queued(site, ctx, JobKind.ANALYZE_STUDY.value) == 1
    assert _run_queued(site, ctx, JobKind.SHADOW_ANALYZE.value) == 1
    with site.db.session() as s:
        rows = s.scalars(select(Analysis).where(Analysis.study_instance_uid == uid).order_by(Analysis.id)).all()
        assert [(a.role, a.model_version, a.current) for a in rows] == [("clinical", "0.1.0", True),
                                                                      ("shadow", "0.2.0", False)]
        assert rows[1].shadow_of_id == rows[0].id
        clinical_ids = {f.id for f in rows[0].findings}
        shadow_uids = {f.tracking_uid for f in rows[1].findings}
        shadow_ids = {f.id for f in rows[1].findings}
    assert clinical_ids and shadow_ids, "both models mark the phantom's bright structures"
    rad = site.h("radiologist")
    detail = c.get(f"/api/v1/studies/{uid}", headers=rad).json()
    assert detail["analysis"]["model_version"] == "0.1.0"
    assert {f["id"] for f in detail["findings_detail"]} == clinical_ids
    listed = next(x for x in c.get("/api/v1/studies", headers=rad).json() if x["study_instance_uid"] == uid)
    assert listed["findings"] == len(clinical_ids)
    some_shadow = next(iter(shadow_ids))
    r = c.post(f"/api/v1/studies/{uid}/findings/{some_shadow}/decision", json={"decision": "accept"}, headers=rad)
    assert r.status_code == 404  # a shadow finding cannot be decided on
    # The radiologist reads the clinical result, signs; the report carries none of the shadow findings.
    for n, fid in enumerate(sorted(clinical_ids)):
        body = {"decision": "accept" if n == 0 else "reject", "reason": "vessel"}
        assert c.post(f"/api/v1/studies/{uid}/findings/{fid}/decision", json=body, headers=rad).status_code == 200
    assert c.post(f"/api/v1/studies/{uid}/sign", headers=rad).status_code == 202
    report_study(ctx, uid, {})
    with site.db.session() as s:
        sr = s.scalar(select(Report).where(Report.study_instance_uid == uid, Report.kind == "sr"))
        assert sr is not None
        data = Path(sr.path).read_bytes()
    assert not any(u.encode() in data for u in shadow_uids)
    # The agreement report is for admins and researchers.
    assert c.get(f"/api/v1/models/{MODEL}/shadow-report", headers=rad).status_code == 403
    report = c.get(f"/api/v1/models/{MODEL}/shadow-report", headers=site.h("researcher")).json()
    (v,) = report["versions"]
    assert v["version"] == "0.2.0" and v["studies_compared"] == 1
    t = v["totals"]
    assert t["shadow_findings"] == len(shadow_ids) == t["agree"] + t["disagree"] + t["extra"]
    assert t["positives"] == 1 and t["rejected"] == len(clinical_ids) - 1
    # Promote the shadow version: the next study is analysed by it, and nothing runs in shadow any more.
    assert c.post(f"/api/v1/models/{MODEL}/promote", json={"version": "0.2.0"}, headers=admin).status_code == 200
    uid2 = _receive_study(site, 602)
    _run_queued(site, ctx, JobKind.ANALYZE_STUDY.value)
    assert _run_queued(site, ctx, JobKind.SHADOW_ANALYZE.value) == 0
    assert c.get(f"/api/v1/studies/{uid2}", headers=rad).json()["analysis"]["model_version"] == "0.2.0"
    # Roll back: the next study goes to 0.1.0 again.
    assert c.post(f"/api/v1/models/{MODEL}/rollback", headers=admin).json()["active_version"] == "0.1.0"
    uid3 = _receive_study(site, 603)
    analyze_study(ctx, uid3, {})
    assert c.get(f"/api/v1/studies/{uid3}", headers=rad).json()["analysis"]["model_version"] == "0.1.0"
    with site.db.session() as s:
        assert s.get(ModelDeployment, MODEL).active_version == "0.1.0"  # type: ignore[union-attr]
        assert [e.action for e in s.scalars(select(AuditEvent).where(AuditEvent.action.like("shadow.%")))] == [
            "shadow.completed", "shadow.report_viewed"]


def test_a_superseded_analysis_is_not_shadowed(site: Site) -> None:
    ctx = TaskContext(settings=site.settings, db=site.db)
    assert site.client.put(f"/api/v1/models/{MODEL}/shadow", json={"version": "0.1.0"},
                           headers=site.h("admin")).status_code == 200  # active: newest, 0.2.0 (pinned)
    uid = _receive_study(site, 604)
    analyze_study(ctx, uid, {})
    with site.db.session() as s:  # the study was re-opened and re-analysed meanwhile
        s.execute(update(Analysis).where(Analysis.study_instance_uid == uid).values(current=False))
    assert _run_queued(site, ctx, JobKind.SHADOW_ANALYZE.value) == 1
    with site.db.session() as s:
        assert s.scalars(select(Analysis).where(Analysis.role == "shadow")).all() == []
        assert s.scalar(select(Job.state).where(Job.kind == JobKind.SHADOW_ANALYZE.value)) == "done"


def _f(x: float, decision: str = "", source: str = "ai", diameter: float = 6.0) -> Finding:
    return Finding(tracking_uid=generate_uid(), center_x_mm=x, center_y_mm=0.0, center_z_mm=0.0, diameter_mm=diameter,
                   volume_mm3=1.0, confidence=0.5, decision=decision, source=source)


def test_agreement_counts() -> None:
    clinical = [_f(0, "accept"), _f(50, "accept"), _f(100, "reject"), _f(150, "accept", source="radiologist"),
                _f(200, "accept", source="radiologist")]
    shadow = [_f(1), _f(101), _f(151), _f(300), _f(2.5)]
    out = agreement(clinical, shadow)
    assert out == {"shadow_findings": 5, "agree": 3, "disagree": 1, "extra": 1, "positives": 4,
                   "positives_found_by_shadow": 2, "positives_found_by_clinical": 2, "added": 2,
                   "added_found_by_shadow": 1, "rejected": 1, "rejected_repeated_by_shadow": 1}


def test_research_routes_need_settings(db: Database) -> None:
    with db.session() as s:
        add_user(s, "res", Role.RESEARCHER)
        token = create_token(s, "res")
    with TestClient(create_app(db)) as c:
        r = c.post("/api/v1/datasets", json={}, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 503 and r.json()["code"] == "not_configured"


def test_state_of_study_is_untouched_by_a_failing_shadow_run(site: Site) -> None:
    ctx = TaskContext(settings=site.settings, db=site.db)
    site.client.put(f"/api/v1/models/{MODEL}/shadow", json={"version": "0.1.0"}, headers=site.h("admin"))
    uid = _receive_study(site, 605)
    analyze_study(ctx, uid, {})
    (site.settings.models_dir / MODEL / "0.1.0" / "model.onnx").write_bytes(b"broken")
    assert _run_queued(site, ctx, JobKind.SHADOW_ANALYZE.value) == 1
    with site.db.session() as s:
        assert s.scalar(select(Job.state).where(Job.kind == JobKind.SHADOW_ANALYZE.value)) == "failed"
        assert decisions.get_study(s, uid).state == StudyState.READY.value
    assert [e.detail["error"] for e in _audit(site, "shadow.failed")] == ["ModelIntegrityError"]
