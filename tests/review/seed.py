"""Seed review tests without the model: a synthetic CT series in a spool, and the DB rows that the
gateway and the analysis would have written (study, instances, analysis, AI findings)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pydicom
from fastapi.testclient import TestClient

from tamsoat.core.db import Database
from tamsoat.core.domain import Role, StudyState
from tamsoat.core.tables import Analysis, Finding, Instance, Study, User
from tamsoat.core.users import add_user
from training.phantom import PhantomNodule, make_phantom
from training.series import write_ct_series

PASSWORD = "correct horse battery staple"
USERS = {  # name: (role, display name)
    "lan": (Role.RADIOLOGIST, "Nguyen^Lan"),
    "binh": (Role.RADIOLOGIST, "Tran^Binh"),
    "admin": (Role.ADMIN, "Admin^Site"),
    "res": (Role.RESEARCHER, "Le^Research"),
}


@dataclass
class SeededStudy:
    uid: str
    series_uid: str
    paths: list[Path]
    finding_ids: list[int]  # AI findings, in order
    nodules: tuple[PhantomNodule, ...]  # ground truth of the phantom
    missed: PhantomNodule | None  # a real nodule that has no AI finding
    extra: dict[str, object] = field(default_factory=dict)


def add_users(db: Database) -> None:
    with db.session() as s:
        for name, (role, display) in USERS.items():
            user = add_user(s, name, role, password=PASSWORD)
            user.display_name = display


def seed_study(db: Database, spool: Path, *, seed: int = 3, slices: int = 64, patient_name: str = "PHAM^THI HOA",
               patient_id: str = "VN-0042", description: str = "CT CHEST LOW DOSE", model: tuple[str, str] = (
                   "lung-nodule-phantom", "0.1.0"), study_date_shift_days: int = 0, false_positive: bool = True,
               state: StudyState = StudyState.READY,
               diameters: tuple[float, float, float, float] = (14.0, 9.0, 6.0, 8.0)) -> SeededStudy:
    """A 512x512 phantom series (1.25 mm slices) with four nodules; AI findings for three of them
    (slightly off in size, as a detector would be) and, optionally, one false positive."""
    phantom = make_phantom(seed, shape_kji=(slices, 512, 512), nodule_diameters_mm=list(diameters),
                           nodule_kinds=["solid", "part-solid", "solid", "solid"])
    folder = spool / f"seed-{seed}-{patient_id}"
    paths = write_ct_series(phantom, folder, patient_name=patient_name, patient_id=patient_id,
                            study_description=description, seed=seed + sum(map(ord, patient_id)))
    first = pydicom.dcmread(paths[0], stop_before_pixels=True)
    study_uid, series_uid = str(first.StudyInstanceUID), str(first.SeriesInstanceUID)
    now = datetime.now(UTC)
    study_date = (now - timedelta(days=study_date_shift_days)).strftime("%Y%m%d")
    with db.session() as s:
        s.add(Study(study_instance_uid=study_uid, state=state.value, patient_name=patient_name,
                    patient_id=patient_id, accession_number=f"ACC{seed}{patient_id[-2:]}", study_date=study_date,
                    study_description=description, modalities="CT", first_received_at=now - timedelta(minutes=9),
                    last_received_at=now - timedelta(minutes=8 + seed)))
        s.flush()
        for p in paths:
            ds = pydicom.dcmread(p, stop_before_pixels=True)
            data = p.read_bytes()
            s.add(Instance(sop_instance_uid=str(ds.SOPInstanceUID), study_instance_uid=study_uid,
                           series_instance_uid=series_uid, sop_class_uid=str(ds.SOPClassUID),
                           transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
                           path=str(p.relative_to(spool)), sha256=hashlib.sha256(data).hexdigest(), size=len(data),
                           calling_ae_title="MODALITY", received_at=now))
        analysis = Analysis(study_instance_uid=study_uid, series_instance_uid=series_uid, model_id=model[0],
                            model_version=model[1], weights_sha256="ab" * 32, device_uid=f"2.25.{seed}{len(model[1])}7",
                            input_sha256="cd" * 32, routing_rule="chest-ct", created_at=now,
                            timings={"inference_s": 3.2})
        confidences = [round(c - 0.04 * (seed % 4), 2) for c in (0.94, 0.81, 0.66)]
        for n, conf in zip(phantom.nodules[:3], confidences, strict=True):
            cx, cy, cz = n.center_mm
            analysis.findings.append(Finding(
                tracking_uid=pydicom.uid.generate_uid(), center_x_mm=cx + 0.4, center_y_mm=cy - 0.3, center_z_mm=cz,
                diameter_mm=round(n.diameter_mm * 1.07, 1), volume_mm3=3.14159 / 6 * (n.diameter_mm * 1.07) ** 3,
                confidence=conf))
        if false_positive:
            cx, cy, cz = phantom.nodules[0].center_mm
            analysis.findings.append(Finding(
                tracking_uid=pydicom.uid.generate_uid(), center_x_mm=-cx * 0.6, center_y_mm=cy + 25.0,
                center_z_mm=cz + 6.0, diameter_mm=5.2, volume_mm3=73.6, confidence=0.41))
        s.add(analysis)
        s.flush()
        ids = [f.id for f in analysis.findings]
    return SeededStudy(study_uid, series_uid, paths, ids, phantom.nodules, phantom.nodules[3])


def login(client: TestClient, name: str, password: str = PASSWORD) -> str:
    """Log in through the form, like a browser; returns the page's CSRF token."""
    page = client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token, page.text
    r = client.post("/login", data={"username": name, "password": password, "csrf_token": token.group(1),
                                    "next": "/"}, follow_redirects=False)
    assert r.status_code == 303, r.text
    home = client.get("/monitoring" if USERS[name][0] == Role.RESEARCHER else "/")
    assert home.status_code == 200, home.text
    return csrf_of(home.text)


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, "no CSRF token on the page"
    return found.group(1)


def user_id(db: Database, name: str) -> int:
    with db.session() as s:
        user = s.query(User).filter_by(name=name).one()
        return user.id
