"""The gateway's HTTP side: the outbox admin API, /metrics, health degraded by a stuck outbox, and
DICOMweb STOW-RS (through the same ingest path as the SCP)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import select

from dicom_gateway import status as st
from dicom_gateway.assembly import record_instance
from dicom_gateway.ingest import Ingestor, StoredInstance
from dicom_gateway.spool import Spool, part10_header
from dicom_gateway.stow import StowBadRequest, iter_parts
from tamsoat.app import create_app
from tamsoat.core import queue
from tamsoat.core.db import Database
from tamsoat.core.domain import JobKind, JobState, OutboxState, Role
from tamsoat.core.tables import AuditEvent, Instance, Job, OutboxItem, Report, Study
from tamsoat.core.users import add_user, create_token
from tamsoat.observability import outbox_health
from tests.dicom_gateway.gateway_helpers import dataset_bytes, make_ct_dataset

BOUNDARY = "tamsoat-test-boundary-7d3f"


@dataclass
class Api:
    client: TestClient
    db: Database
    spool: Spool
    tokens: dict[str, str]

    def as_(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}


@pytest.fixture
def api(db: Database, tmp_path: Path) -> Iterator[Api]:
    spool = Spool(tmp_path / "spool", fsync=False)

    def sink(stored: StoredInstance) -> None:
        with db.engine.begin() as conn:
            record_instance(conn, stored)

    tokens = {}
    with db.session() as s:
        for name, role in (("ada", Role.ADMIN), ("rad", Role.RADIOLOGIST), ("modality1", Role.INTEGRATION)):
            add_user(s, name, role)
            tokens[name] = create_token(s, name)
    app = create_app(db, probe=lambda: outbox_health(db, stuck_after_s=600))
    app.state.ingestor = Ingestor(spool, sink)
    app.state.ae_title = "TAMSOAT"
    with TestClient(app) as client:
        yield Api(client, db, spool, tokens)


# -- outbox ------------------------------------------------------------------------------------------


def seed_outbox(db: Database, tmp_path: Path, age: timedelta = timedelta(0)) -> dict[str, int]:
    now = datetime.now(UTC)
    created = now - age
    ids = {}
    with db.session() as s:
        s.add(Study(study_instance_uid="1.2.3", state="signed", first_received_at=now, last_received_at=now))
        s.flush()
        for n, (state, status, error) in enumerate([
            (OutboxState.DEAD, 0xA900, "0xA900 error: data set does not match SOP class"),
            (OutboxState.PENDING, 0xA700, "0xA700 refused: out of resources"),
            (OutboxState.SENT, 0x0000, ""),
        ]):
            r = Report(study_instance_uid="1.2.3", sop_instance_uid=f"1.2.3.9.{n}",
                       sop_class_uid="1.2.840.10008.5.1.4.1.1.88.34", kind="sr", path=str(tmp_path / f"sr{n}.dcm"),
                       created_at=created)
            s.add(r)
            s.flush()
            item = OutboxItem(destination="pacs", report_id=r.id, state=state.value, attempts=3, last_status=status,
                              error=error, next_attempt_at=now + timedelta(hours=1), created_at=created,
                              sent_at=now if state == OutboxState.SENT else None)
            s.add(item)
            s.flush()
            ids[state.value] = item.id
            if state == OutboxState.PENDING:
                job = queue.enqueue(s, JobKind.SEND_OUTBOX.value, str(item.id), delay_s=3600)
                ids["pending_job"] = job.id
    return ids


def test_outbox_needs_an_admin(api: Api) -> None:
    assert api.client.get("/api/v1/outbox").status_code == 401
    assert api.client.get("/api/v1/outbox", headers=api.as_("rad")).status_code == 403
    assert api.client.get("/api/v1/outbox", headers=api.as_("modality1")).status_code == 403
    assert api.client.post("/api/v1/outbox/1/retry", headers=api.as_("rad")).status_code == 403


def test_outbox_lists_dead_items_with_their_reason(api: Api, tmp_path: Path) -> None:
    ids = seed_outbox(api.db, tmp_path)
    r = api.client.get("/api/v1/outbox", headers=api.as_("ada"))
    assert r.status_code == 200
    assert [i["id"] for i in r.json()] == sorted(ids[k] for k in ("dead", "pending", "sent"))[::-1]
    dead = api.client.get("/api/v1/outbox", params={"state": "dead"}, headers=api.as_("ada")).json()
    assert len(dead) == 1
    assert dead[0]["last_status"] == "0xA900" and "does not match SOP class" in dead[0]["error"]
    assert dead[0]["sop_instance_uid"] == "1.2.3.9.0" and dead[0]["attempts"] == 3
    one = api.client.get(f"/api/v1/outbox/{ids['dead']}", headers=api.as_("ada")).json()
    assert one == dead[0]
    assert api.client.get("/api/v1/outbox/999", headers=api.as_("ada")).json()["code"] == "outbox_not_found"


def test_retry_requeues_a_dead_item_and_audits_it(api: Api, tmp_path: Path) -> None:
    ids = seed_outbox(api.db, tmp_path)
    r = api.client.post(f"/api/v1/outbox/{ids['dead']}/retry", headers=api.as_("ada"))
    assert r.status_code == 202, r.text
    assert r.json()["state"] == "pending" and r.json()["attempts"] == 0
    with api.db.session() as s:
        (job,) = s.scalars(select(Job).where(Job.key == str(ids["dead"]))).all()
        assert job.kind == JobKind.SEND_OUTBOX and job.state == JobState.QUEUED
        assert job.not_before <= datetime.now(UTC)
        event = s.scalars(select(AuditEvent).where(AuditEvent.action == "outbox.retried")).one()
        assert event.actor == "ada" and event.target == str(ids["dead"])
        assert event.detail["previous_state"] == "dead"


def test_retry_of_a_waiting_item_reuses_its_job(api: Api, tmp_path: Path) -> None:
    ids = seed_outbox(api.db, tmp_path)
    r = api.client.post(f"/api/v1/outbox/{ids['pending']}/retry", headers=api.as_("ada"))
    assert r.status_code == 202
    with api.db.session() as s:
        jobs = s.scalars(select(Job).where(Job.key == str(ids["pending"]))).all()
        assert [j.id for j in jobs] == [ids["pending_job"]]
        assert jobs[0].not_before <= datetime.now(UTC)
        item = s.get(OutboxItem, ids["pending"])
        assert item is not None and item.attempts == 3  # backoff skipped, attempts kept


def test_retry_refused_for_sent_and_in_flight_items(api: Api, tmp_path: Path) -> None:
    ids = seed_outbox(api.db, tmp_path)
    r = api.client.post(f"/api/v1/outbox/{ids['sent']}/retry", headers=api.as_("ada"))
    assert r.status_code == 409 and r.json()["code"] == "outbox_conflict"
    with api.db.session() as s:
        job = s.get(Job, ids["pending_job"])
        assert job is not None
        job.state = JobState.RUNNING.value
    r = api.client.post(f"/api/v1/outbox/{ids['pending']}/retry", headers=api.as_("ada"))
    assert r.status_code == 409 and "being sent" in r.json()["message"]


# -- health and metrics ----------------------------------------------------------------------------


def test_health_is_degraded_while_the_outbox_is_stuck(api: Api, tmp_path: Path) -> None:
    r = api.client.get("/healthz")
    assert r.status_code == 200 and r.json()["outbox_flowing"] is True
    seed_outbox(api.db, tmp_path, age=timedelta(hours=2))  # older than stuck_after_s=600
    r = api.client.get("/healthz")
    assert r.status_code == 503
    body = r.json()
    assert body["status"] == "degraded" and body["outbox_flowing"] is False
    assert body["outbox_oldest_open_s"] > 7000


def test_metrics_for_machines_and_admins_only(api: Api, tmp_path: Path) -> None:
    seed_outbox(api.db, tmp_path)
    assert api.client.get("/metrics").status_code == 401
    assert api.client.get("/metrics", headers=api.as_("rad")).status_code == 403
    r = api.client.get("/metrics", headers=api.as_("modality1"))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'tamsoat_outbox_items{destination="pacs",state="dead"} 1.0' in text
    assert 'tamsoat_outbox_items{destination="pacs",state="pending"} 1.0' in text
    assert 'tamsoat_jobs{kind="send_outbox",state="queued"} 1.0' in text
    assert 'tamsoat_studies{state="signed"} 1.0' in text
    assert "tamsoat_outbox_oldest_open_seconds" in text
    assert api.client.get("/metrics", headers=api.as_("ada")).status_code == 200


def _counter(text: str, prefix: str) -> float:
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# -- STOW-RS ---------------------------------------------------------------------------------------


def part10(ds: Dataset, preamble: bytes = b"\0" * 128) -> bytes:
    from io import BytesIO

    buf = BytesIO()
    ds.preamble = preamble
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def multipart(parts: list[bytes], content_type: str = "application/dicom") -> bytes:
    body = b"preamble to be ignored\r\n"
    for p in parts:
        body += f"--{BOUNDARY}\r\nContent-Type: {content_type}\r\n\r\n".encode() + p + b"\r\n"
    return body + f"--{BOUNDARY}--\r\nepilogue".encode()


STOW_CT = f'multipart/related; type="application/dicom"; boundary="{BOUNDARY}"'


def stow(api: Api, body: bytes, path: str = "/dicomweb/studies", who: str = "modality1",
         content_type: str = STOW_CT) -> tuple[int, dict[str, object]]:
    headers = {**api.as_(who), "Content-Type": content_type, "Accept": "application/dicom+json"}
    r = api.client.post(path, content=body, headers=headers)
    return r.status_code, (r.json() if r.content else {})


def _seq(body: dict[str, object], tag: str) -> list[dict[str, dict[str, list[object]]]]:
    element = body.get(tag)
    return element["Value"] if isinstance(element, dict) else []  # type: ignore[return-value]


REFERENCED, FAILED, OTHER = "00081199", "00081198", "0008119A"
SOP_UID, FAILURE = "00081155", "00081197"


def test_stow_stores_every_part_like_a_c_store(api: Api) -> None:
    study = generate_uid()
    sets = [make_ct_dataset(study_uid=study, seed=i) for i in range(3)]
    status, body = stow(api, multipart([part10(ds, preamble=b"\x7f" * 128) for ds in sets]))
    assert status == 200, body
    refs = _seq(body, REFERENCED)
    assert [r[SOP_UID]["Value"][0] for r in refs] == [str(ds.SOPInstanceUID) for ds in sets]
    assert FAILED not in body
    with api.db.session() as s:
        rows = s.scalars(select(Instance).order_by(Instance.id)).all()
        assert [r.sop_instance_uid for r in rows] == [str(ds.SOPInstanceUID) for ds in sets]
        assert {r.calling_ae_title for r in rows} == {"modality1"}
        study_row = s.get(Study, study)
        assert study_row is not None and study_row.patient_id == "PID-0001"
    for ds, row in zip(sets, rows, strict=True):
        stored = api.spool.path(row.path)
        assert stored.read_bytes()[:128] == b"\0" * 128  # the preamble is never kept
        assert dataset_bytes(stored) == part10(ds)[dataset_offset_of(part10(ds)):]
        assert dcmread(stored).SOPInstanceUID == ds.SOPInstanceUID
    # An identical re-send is success and adds nothing.
    status, body = stow(api, multipart([part10(sets[0])]))
    assert status == 200
    with api.db.session() as s:
        assert len(s.scalars(select(Instance)).all()) == 3
    metrics = api.client.get("/metrics", headers=api.as_("ada")).text
    assert _counter(metrics, 'tamsoat_dicom_instances_received_total{calling_ae="modality1",outcome="stored",'
                             'source="stow",status="0x0000"}') >= 3


def dataset_offset_of(data: bytes) -> int:
    group_length = int.from_bytes(data[140:144], "little")
    return 144 + group_length


def test_stow_partial_success_is_202_with_failure_reasons(api: Api) -> None:
    study = generate_uid()
    good = make_ct_dataset(study_uid=study, seed=1)
    other_study = make_ct_dataset(seed=2)
    odd_syntax = make_ct_dataset(study_uid=study, seed=3)
    plain = part10(odd_syntax)
    # JPEG 2000 Part 2 multi-component: a transfer syntax the gateway does not accept.
    odd_meta = part10_header(sop_class_uid=odd_syntax.SOPClassUID, sop_instance_uid=odd_syntax.SOPInstanceUID,
                             transfer_syntax_uid="1.2.840.10008.1.2.4.92") + plain[dataset_offset_of(plain):]
    parts = [part10(good), part10(other_study), b"this is not DICOM", odd_meta]
    status, body = stow(api, multipart(parts), path=f"/dicomweb/studies/{study}")
    assert status == 202, body
    assert [r[SOP_UID]["Value"][0] for r in _seq(body, REFERENCED)] == [str(good.SOPInstanceUID)]
    failed = {f[SOP_UID]["Value"][0]: f[FAILURE]["Value"][0] for f in _seq(body, FAILED)}
    assert failed == {str(other_study.SOPInstanceUID): st.STUDY_MISMATCH,
                      str(odd_syntax.SOPInstanceUID): st.TRANSFER_SYNTAX_NOT_SUPPORTED}
    assert [o[FAILURE]["Value"][0] for o in _seq(body, OTHER)] == [st.CANNOT_UNDERSTAND]
    with api.db.session() as s:
        assert [r.sop_instance_uid for r in s.scalars(select(Instance)).all()] == [str(good.SOPInstanceUID)]


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_stow_nothing_stored_is_409(api: Api) -> None:
    ds = make_ct_dataset(seed=4)
    plain = part10(ds)
    # The File Meta Information names another instance than the data set holds.
    mismatch = part10_header(sop_class_uid=ds.SOPClassUID, sop_instance_uid="1.2.3.4",
                             transfer_syntax_uid=ds.file_meta.TransferSyntaxUID) + plain[dataset_offset_of(plain):]
    bad = make_ct_dataset(seed=5)
    bad.SOPInstanceUID = "1.2.03.4"  # invalid UID (leading zero): never becomes a path
    status, body = stow(api, multipart([mismatch, part10(bad), b"\0" * 200]))
    assert status == 409
    assert [(f[SOP_UID]["Value"][0], f[FAILURE]["Value"][0]) for f in _seq(body, FAILED)] == [
        ("1.2.3.4", st.INVALID_UIDS)]
    assert [o[FAILURE]["Value"][0] for o in _seq(body, OTHER)] == [st.INVALID_UIDS, st.CANNOT_UNDERSTAND]
    assert list(api.spool.root.rglob("*.dcm")) == []


def test_stow_refuses_other_media_and_anonymous_or_reading_users(api: Api) -> None:
    body = multipart([part10(make_ct_dataset(seed=5))])
    assert stow(api, body, content_type="application/dicom")[0] == 415
    xml = f'multipart/related; type="application/dicom+xml"; boundary={BOUNDARY}'
    assert stow(api, body, content_type=xml)[0] == 415
    assert stow(api, b"--nope\r\n", content_type=STOW_CT)[0] == 400
    assert stow(api, body, path="/dicomweb/studies/not-a-uid")[0] == 400
    assert stow(api, body, who="rad")[0] == 403
    r = api.client.post("/dicomweb/studies", content=body, headers={"Content-Type": STOW_CT})
    assert r.status_code == 401
    assert stow(api, body, who="ada")[0] == 200  # admins may too


def test_stow_without_an_ingest_path_is_503(db: Database) -> None:
    with db.session() as s:
        add_user(s, "m", Role.INTEGRATION)
        token = create_token(s, "m")
    with TestClient(create_app(db)) as client:
        r = client.post("/dicomweb/studies", content=b"", headers={"Authorization": f"Bearer {token}",
                                                                   "Content-Type": STOW_CT})
    assert r.status_code == 503


@pytest.mark.parametrize("seed", range(5))
def test_multipart_parser_is_indifferent_to_chunking(seed: int) -> None:
    rng = random.Random(seed)
    parts = [rng.randbytes(rng.randint(0, 3000)) + f"--{BOUNDARY[:-1]}".encode() for _ in range(4)]
    body = multipart(parts)

    async def chunks() -> AsyncIterator[bytes]:
        i = 0
        while i < len(body):
            n = rng.choice([1, 2, 7, 64, 1000, 5000])
            yield body[i:i + n]
            i += n

    async def collect() -> list[tuple[dict[str, str], bytes]]:
        return [p async for p in iter_parts(chunks(), BOUNDARY.encode())]

    got = asyncio.run(collect())
    assert [b for _, b in got] == parts
    assert all(h == {"content-type": "application/dicom"} for h, _ in got)


def test_multipart_parser_needs_the_closing_boundary() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield f"--{BOUNDARY}\r\n\r\nabc\r\n".encode()

    async def collect() -> None:
        async for _ in iter_parts(chunks(), BOUNDARY.encode()):
            pass

    with pytest.raises(StowBadRequest, match="closing boundary"):
        asyncio.run(collect())
