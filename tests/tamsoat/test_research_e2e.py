"""The research loop end to end, with the shipped model: studies received through the gateway's ingest path
and analysed by the engine; reviewed through the API and the review pages; exported by a researcher;
fine-tuned for a few steps; evaluated and registered; run in shadow on a new study (stored, never shown,
never reported); promoted (the next study uses it) and rolled back."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from inference.volume import Volume
from tamsoat.app import create_app
from tamsoat.cli_training import shipped_model
from tamsoat.core import queue
from tamsoat.core.db import Database
from tamsoat.core.domain import JobKind, Role
from tamsoat.core.settings import Settings
from tamsoat.core.tables import Analysis, AuditEvent, Report
from tamsoat.core.users import add_user, create_token
from tamsoat.deployments import register_version
from tamsoat.jobs import run_job
from tamsoat.research_demo import DEMO_SHAPE, DEMO_SPACING, Identity, close_received, receive, write_study
from tamsoat.tasks import TaskContext, report_study
from tests.review.seed import PASSWORD, csrf_of
from training.finetune import export_candidate, finetune
from training.froc import evaluate_models, phantom_cases
from training.phantom import PhantomNodule, phantom_affine
from training.register import next_minor
from training.snapshot import read_snapshot

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
MODEL = "lung-nodule-phantom"
CURRENT = shipped_model().name  # the newest shipped version, what the service runs
NEW = next_minor([CURRENT])  # the version the researcher registers
PATIENTS = [Identity("LE^THI MAI", "E2E-1", study_date="20230105"),
            Identity("LE^THI MAI", "E2E-1", study_date="20240110"),
            Identity("PHAN^VAN HAI", "E2E-2", study_date="20240301")]


def _run(db: Database, ctx: TaskContext, kind: str) -> int:
    ran = 0
    while True:
        with db.session() as s:
            job = queue.claim(s, "e2e", (kind,))
            args = None if job is None else (job.id, job.kind, job.key, dict(job.payload))
        if args is None:
            return ran
        run_job(ctx, *args)
        ran += 1


def _pixel(truth: PhantomNodule, shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> dict[str, float]:
    """Where a true nodule is on the review page: (slice, column, row) of the written series."""
    volume = Volume(array=None, affine=phantom_affine(shape, spacing))  # type: ignore[arg-type]
    i, j, k = volume.patient_to_index(truth.center_mm)
    return {"slice": round(float(k)), "column": float(i), "row": float(j)}


def test_reviewed_studies_to_a_promoted_model_and_back(tmp_path: Path) -> None:
    models = tmp_path / "models"
    shutil.copytree(REPO / "models", models)
    settings = Settings(home=tmp_path / "home", models_dir=models, datasets_dir=tmp_path / "datasets",
                        inference_threads=2)
    from tamsoat.core.db import migrate

    migrate(settings.db_url)
    db = Database(settings.db_url)
    tokens = {}
    with db.session() as s:
        for name, role in (("rad", Role.RADIOLOGIST), ("res", Role.RESEARCHER), ("boss", Role.ADMIN)):
            add_user(s, name, role, password=PASSWORD)
            tokens[name] = {"Authorization": f"Bearer {create_token(s, name)}"}
    ctx = TaskContext(settings=settings, db=db)
    app = create_app(db, settings=settings)
    api, page = TestClient(app), TestClient(app, base_url="http://testserver")
    def new_study(n: int, ident: Identity) -> tuple[str, tuple[PhantomNodule, ...]]:
        paths, truth = write_study(tmp_path / "in" / str(n), ident, seed=900 + n)
        uid = receive(db, settings.spool_path, paths)
        close_received(db)
        return uid, truth

    # 1. Three studies arrive and are analysed by the shipped model.
    studies = [new_study(n, ident) for n, ident in enumerate(PATIENTS)]
    assert _run(db, ctx, JobKind.ANALYZE_STUDY.value) == 3
    # 2. The radiologist reviews them: decisions through the API, missed nodules added on the review page.
    page.post("/login", data={"username": "rad", "password": PASSWORD, "next": "/",
                              "csrf_token": csrf_of(page.get("/login").text)}, follow_redirects=False)
    csrf = csrf_of(page.get("/").text)
    for uid, truth in studies:
        detail = api.get(f"/api/v1/studies/{uid}", headers=tokens["rad"]).json()
        assert detail["analysis"]["model_version"] == CURRENT
        found = set()
        for f in detail["findings_detail"]:
            hit = next((n for n, t in enumerate(truth) if math.dist(f["center_mm"], t.center_mm) <= max(
                t.diameter_mm / 2, 2.5)), None)
            body = {"decision": "reject", "reason": "vessel"} if hit is None else {"decision": "accept"}
            found |= set() if hit is None else {hit}
            r = api.post(f"/api/v1/studies/{uid}/findings/{f['id']}/decision", json=body, headers=tokens["rad"])
            assert r.status_code == 200, r.text
        for n, t in enumerate(truth):
            if n not in found:
                r = page.post(f"/studies/{uid}/findings", headers={"X-CSRF-Token": csrf},
                              json={"center": _pixel(t, DEMO_SHAPE, DEMO_SPACING),
                                    "diameter_mm": round(t.diameter_mm, 1), "nodule_type": t.kind.replace("-", "_")})
                assert r.status_code == 200, r.text
        assert api.post(f"/api/v1/studies/{uid}/sign", headers=tokens["rad"]).status_code == 202

    # 3. A radiologist may not export; a researcher may.
    assert api.post("/api/v1/datasets", json={}, headers=tokens["rad"]).status_code == 403
    r = api.post("/api/v1/datasets", json={"snapshot_name": "e2e"}, headers=tokens["res"])
    assert r.status_code == 201, r.text
    snapshot = read_snapshot(Path(r.json()["path"]))
    assert len(snapshot.cases) == 3 and sum(len(c.positives) for c in snapshot.cases) == sum(len(t) for _, t in studies)
    assert len({c.patient for c in snapshot.cases}) == 2

    # 4. Fine-tune from the shipped model's ONNX weights for a few steps, export, evaluate, register.
    run = tmp_path / "run"
    finetune(REPO / "training" / "configs" / "research_tiny.yaml", run, snapshot=snapshot.path, steps=2,
             log=lambda _m: None)
    candidate = export_candidate(run, tmp_path / "candidate", model_id=MODEL, version=f"{NEW}-rc.1")
    evaluation = evaluate_models({"current": models / MODEL / CURRENT, "new": candidate},
                                 phantom_cases(1, tiny=True), description="1 tiny held-out phantom",
                                 log=lambda _m: None)
    assert set(evaluation["models"]) == {"current", "new"} and evaluation["models"]["new"]["cpm"] is not None
    (candidate / "evaluation.json").write_text(json.dumps(evaluation))
    registered = register_version(db, settings, candidate, NEW, "cli:res")
    assert registered.directory == models / MODEL / NEW
    lineage = json.loads((registered.directory / "lineage.json").read_text())
    assert lineage["snapshot"]["id"] == "e2e" and lineage["parent"]["version"] == CURRENT
    assert api.get("/api/v1/models", headers=tokens["res"]).json()[0]["active_version"] == CURRENT  # pinned

    # 5. Shadow: the new version runs after the clinical analysis; its findings are never shown or reported.
    assert api.put(f"/api/v1/models/{MODEL}/shadow", json={"version": NEW},
                   headers=tokens["boss"]).status_code == 200
    uid, truth = new_study(10, Identity("VO^AN", "E2E-3"))
    assert _run(db, ctx, JobKind.ANALYZE_STUDY.value) == 1
    assert _run(db, ctx, JobKind.SHADOW_ANALYZE.value) == 1
    with db.session() as s:
        rows = s.scalars(select(Analysis).where(Analysis.study_instance_uid == uid).order_by(Analysis.id)).all()
        assert [(a.role, a.model_version, a.current) for a in rows] == [("clinical", CURRENT, True),
                                                                      ("shadow", NEW, False)]
        shadow_uids = {f.tracking_uid for f in rows[1].findings}
        shadow_ids = {f.id for f in rows[1].findings}
    detail = api.get(f"/api/v1/studies/{uid}", headers=tokens["rad"]).json()
    assert detail["analysis"]["model_version"] == CURRENT
    assert not {f["id"] for f in detail["findings_detail"]} & shadow_ids
    assert not {f["tracking_uid"] for f in detail["findings_detail"]} & shadow_uids
    viewer = page.get(f"/studies/{uid}/state")  # the radiologist's viewer and worklist show none of them either
    assert viewer.status_code == 200 and len(viewer.json()["findings"]) == len(detail["findings_detail"])
    assert not any(u in viewer.text for u in shadow_uids)
    assert not any(u in page.get("/").text for u in shadow_uids)
    for f in detail["findings_detail"]:
        api.post(f"/api/v1/studies/{uid}/findings/{f['id']}/decision", json={"decision": "accept"},
                 headers=tokens["rad"])
    assert api.post(f"/api/v1/studies/{uid}/sign", headers=tokens["rad"]).status_code == 202
    report_study(ctx, uid, {})
    with db.session() as s:
        sr = s.scalar(select(Report).where(Report.study_instance_uid == uid, Report.kind == "sr"))
        assert sr is not None
        sr_bytes = Path(sr.path).read_bytes()
    assert not any(u.encode() in sr_bytes for u in shadow_uids)
    report = api.get(f"/api/v1/models/{MODEL}/shadow-report", headers=tokens["res"]).json()
    assert report["versions"][0]["version"] == NEW and report["versions"][0]["studies_compared"] == 1

    # 6. Promote: the next study is analysed by NEW (registered after the engine started); roll back.
    assert api.post(f"/api/v1/models/{MODEL}/promote", json={"version": NEW},
                    headers=tokens["res"]).status_code == 403
    r = api.post(f"/api/v1/models/{MODEL}/promote", json={"version": NEW}, headers=tokens["boss"])
    assert r.status_code == 200 and r.json()["previous_version"] == CURRENT
    uid2, _ = new_study(11, Identity("VO^AN", "E2E-3"))
    _run(db, ctx, JobKind.ANALYZE_STUDY.value)
    assert _run(db, ctx, JobKind.SHADOW_ANALYZE.value) == 0
    analysis = api.get(f"/api/v1/studies/{uid2}", headers=tokens["rad"]).json()["analysis"]
    assert analysis["model_version"] == NEW
    assert analysis["weights_sha256"] == registered.manifest.weights_sha256
    assert api.post(f"/api/v1/models/{MODEL}/rollback", headers=tokens["boss"]).json()["active_version"] == CURRENT
    uid3, _ = new_study(12, Identity("VO^AN", "E2E-3"))
    _run(db, ctx, JobKind.ANALYZE_STUDY.value)
    assert api.get(f"/api/v1/studies/{uid3}", headers=tokens["rad"]).json()["analysis"]["model_version"] == CURRENT
    with db.session() as s:
        actions = [e.action for e in s.scalars(select(AuditEvent).order_by(AuditEvent.id))]
    for action in ("dataset.exported", "model.deployment_pinned", "model.registered", "model.shadow_set",
                   "shadow.completed", "shadow.report_viewed", "model.promoted", "model.rolled_back"):
        assert action in actions, action
    db.dispose()
