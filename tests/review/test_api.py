from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient

from tamsoat.app import create_app
from tamsoat.core.db import Database
from tamsoat.core.domain import JobKind, Role, StudyState
from tamsoat.core.tables import Analysis, AuditEvent, Finding, Job, Study
from tamsoat.core.users import add_user, create_token

STUDY = "1.2.826.0.1.3680043.8.498.1"


def seed_study(db: Database, n_findings: int = 3, state: StudyState = StudyState.READY) -> list[int]:
    now = datetime.now(UTC)
    with db.session() as s:
        s.add(Study(study_instance_uid=STUDY, state=state.value, patient_name="Test^Patient",
                    first_received_at=now, last_received_at=now))
        s.flush()
        a = Analysis(study_instance_uid=STUDY, series_instance_uid="1.2.3", model_id="m", model_version="1",
                     weights_sha256="0" * 64, device_uid="2.25.1", input_sha256="1" * 64, created_at=now,
                     timings={"inference": 1.5})
        for i in range(n_findings):
            a.findings.append(Finding(tracking_uid=f"1.2.3.{i}", center_x_mm=i, center_y_mm=0, center_z_mm=-i,
                                      diameter_mm=5 + i, volume_mm3=100, confidence=0.9 - i / 10))
        s.add(a)
        s.flush()
        return [f.id for f in a.findings]


@pytest.fixture
def client(db: Database) -> Iterator[TestClient]:
    with TestClient(create_app(db)) as c:
        yield c


@pytest.fixture
def tokens(db: Database) -> dict[str, str]:
    out = {}
    with db.session() as s:
        for role in Role:
            add_user(s, role.value, role)
            out[role.value] = create_token(s, role.value)
    return out


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_every_api_route_refuses_anonymous_and_bad_tokens(client: TestClient, db: Database) -> None:
    seed_study(db)
    routes = [("get", "/api/v1/studies"), ("get", f"/api/v1/studies/{STUDY}"),
              ("post", f"/api/v1/studies/{STUDY}/findings/1/decision"), ("post", f"/api/v1/studies/{STUDY}/sign")]
    for method, url in routes:
        for headers in ({}, auth("tms_wrong"), {"Authorization": "Basic abc"}):
            r = client.request(method, url, headers=headers, json={"decision": "accept"})
            assert r.status_code == 401, (method, url, headers)
            assert r.json()["code"] == "unauthenticated" and r.json()["message"]


def test_roles(client: TestClient, db: Database, tokens: dict[str, str]) -> None:
    ids = seed_study(db)
    assert client.get("/api/v1/studies", headers=auth(tokens["researcher"])).status_code == 403
    assert client.get("/api/v1/studies", headers=auth(tokens["admin"])).status_code == 200
    r = client.post(f"/api/v1/studies/{STUDY}/findings/{ids[0]}/decision", json={"decision": "accept"},
                    headers=auth(tokens["admin"]))
    assert r.status_code == 403 and r.json()["code"] == "forbidden"


def test_review_flow(client: TestClient, db: Database, tokens: dict[str, str]) -> None:
    ids = seed_study(db)
    h = auth(tokens["radiologist"])
    listing = client.get("/api/v1/studies", headers=h).json()
    assert [(x["study_instance_uid"], x["findings"], x["state"]) for x in listing] == [(STUDY, 3, "ready")]
    detail = client.get(f"/api/v1/studies/{STUDY}", headers=h).json()
    assert [f["id"] for f in detail["findings_detail"]] == ids
    assert detail["analysis"]["model_id"] == "m" and detail["findings_detail"][0]["decision"] is None

    r = client.post(f"/api/v1/studies/{STUDY}/sign", headers=h)
    assert r.status_code == 409 and r.json()["code"] == "findings_undecided"

    for fid, decision in zip(ids, ["accept", "reject", "accept"], strict=True):
        r = client.post(f"/api/v1/studies/{STUDY}/findings/{fid}/decision", json={"decision": decision}, headers=h)
        assert r.status_code == 200 and r.json()["decision"] == decision and r.json()["decided_by"] == "radiologist"

    r = client.post(f"/api/v1/studies/{STUDY}/sign", headers=h)
    assert r.status_code == 202 and r.json() == {"study_instance_uid": STUDY, "state": "signed", "accepted": 2,
                                                 "rejected": 1}
    with db.session() as s:
        jobs = s.query(Job).all()
        assert [(j.kind, j.key) for j in jobs] == [(JobKind.REPORT_STUDY.value, STUDY)]
        actions = [e.action for e in s.query(AuditEvent).order_by(AuditEvent.id)]
        assert actions.count("finding.accept") == 2 and "study.signed" in actions
    # Once signed, decisions are closed.
    r = client.post(f"/api/v1/studies/{STUDY}/findings/{ids[0]}/decision", json={"decision": "reject"}, headers=h)
    assert r.status_code == 409
    assert client.post(f"/api/v1/studies/{STUDY}/sign", headers=h).status_code == 409


def test_bad_requests_get_clear_errors(client: TestClient, db: Database, tokens: dict[str, str]) -> None:
    ids = seed_study(db)
    h = auth(tokens["radiologist"])
    r = client.get("/api/v1/studies/1.2.3.4", headers=h)
    assert r.status_code == 404 and r.json()["code"] == "study_not_found"
    r = client.post(f"/api/v1/studies/{STUDY}/findings/99999/decision", json={"decision": "accept"}, headers=h)
    assert r.status_code == 404 and r.json()["code"] == "finding_not_found"
    r = client.post(f"/api/v1/studies/{STUDY}/findings/{ids[0]}/decision", json={"decision": "maybe"}, headers=h)
    assert r.status_code == 422 and "decision" in r.json()["message"]


def test_health_and_openapi(client: TestClient) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok" and r.json()["database"] == "ok"
    paths = client.get("/openapi.json").json()["paths"]
    for p in ["/healthz", "/api/v1/studies", "/api/v1/studies/{study_instance_uid}",
              "/api/v1/studies/{study_instance_uid}/findings/{finding_id}/decision",
              "/api/v1/studies/{study_instance_uid}/sign"]:
        assert p in paths
