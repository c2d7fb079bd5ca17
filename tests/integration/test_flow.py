"""The whole flow, with real parts: DCMTK storescu → tamsoat serve (SQLite, spool, ONNX model) → API
decisions and sign-off → DCMTK storescp receives a TID 1500 SR that passes dciodvfy."""

from __future__ import annotations

import math
import subprocess
import time
from pathlib import Path
from typing import Any

import highdicom as hd
import pydicom
import pytest

from tests.integration.peers import Peer, Service, need
from training.phantom import make_phantom
from training.series import write_ct_series

pytestmark = [pytest.mark.dcmtk, pytest.mark.slow]


def poll(fn: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.5)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


def test_study_flows_from_pacs_to_report(tmp_path: Path, service: Service, storescp: Peer) -> None:
    phantom = make_phantom(11, shape_kji=(120, 512, 512), nodule_diameters_mm=[18.0, 14.0, 12.0])
    files = write_ct_series(phantom, tmp_path / "series", seed=11)
    study_uid = pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID
    sent = subprocess.run([need("storescu"), "-aet", "MODALITY", "-aec", "TAMSOAT", "+sd", "+r",
                           "127.0.0.1", str(service.dicom_port), str(tmp_path / "series")],
                          capture_output=True, text=True, timeout=300)
    assert sent.returncode == 0, sent.stderr

    api = service.client(service.token("rad", "radiologist"))

    def ready() -> dict[str, Any] | None:
        r = api.get(f"/api/v1/studies/{study_uid}")
        if r.status_code != 200:
            return None
        body: dict[str, Any] = r.json()
        assert body["state"] not in ("failed", "skipped"), body["error"]
        return body if body["state"] == "ready" else None

    study = poll(ready, 300, "findings")
    findings = study["findings_detail"]
    assert study["analysis"]["model_id"] == "lung-nodule-phantom"
    for f in findings:
        assert len(f["center_mm"]) == 3 and f["diameter_mm"] > 0 and 0 < f["confidence"] <= 1
    # The real network finds the phantom's nodules where the ground truth puts them (patient mm).
    found = [n for n in phantom.nodules
             if any(math.dist(n.center_mm, f["center_mm"]) <= n.diameter_mm / 2 for f in findings)]
    assert len(found) >= 2, (phantom.nodules, findings)
    rejected = findings[1]["tracking_uid"]
    for i, f in enumerate(findings):
        decision = "reject" if i == 1 else "accept"
        r = api.post(f"/api/v1/studies/{study_uid}/findings/{f['id']}/decision", json={"decision": decision})
        assert r.status_code == 200, r.text
    assert api.post(f"/api/v1/studies/{study_uid}/sign").status_code == 202

    sr_path: Path = poll(lambda: next(iter(storescp.out_dir.glob("SR*")), None), 120, "the SR at the PACS")
    time.sleep(0.5)  # storescp writes the file before the C-STORE response; let it finish
    check = subprocess.run([need("dciodvfy"), str(sr_path)], capture_output=True, text=True)
    errors = [line for line in (check.stdout + check.stderr).splitlines() if "Error" in line]
    assert not errors, "\n".join(errors)

    ds = pydicom.dcmread(sr_path)
    assert ds.StudyInstanceUID == study_uid and ds.VerificationFlag == "VERIFIED"
    sr = hd.sr.Comprehensive3DSR.from_dataset(ds)
    uids = {str(item.TextValue if hasattr(item, "TextValue") else item.UID)
            for item in _walk(sr.ContentSequence) if _concept(item) == "112040"}
    accepted = {f["tracking_uid"] for i, f in enumerate(findings) if i != 1}
    assert uids == accepted and rejected not in uids

    detail = api.get(f"/api/v1/studies/{study_uid}").json()
    assert detail["state"] == "signed" and detail["reports"] == [ds.SOPInstanceUID]


def _concept(item: Any) -> str | None:
    seq = getattr(item, "ConceptNameCodeSequence", None)
    return str(seq[0].CodeValue) if seq else None


def _walk(seq: Any) -> Any:
    for item in seq:
        yield item
        yield from _walk(getattr(item, "ContentSequence", []))


def test_echo_and_garbage_store(service: Service) -> None:
    echo = subprocess.run([need("echoscu"), "-aec", "TAMSOAT", "127.0.0.1", str(service.dicom_port)],
                          capture_output=True, text=True, timeout=30)
    assert echo.returncode == 0, echo.stderr
    from tests.dicom_gateway.garbage import send_garbage

    status = send_garbage("127.0.0.1", service.dicom_port, "TAMSOAT")
    assert status is not None and status >= 0xA000, hex(status or 0)
    echo = subprocess.run([need("echoscu"), "-aec", "TAMSOAT", "127.0.0.1", str(service.dicom_port)],
                          capture_output=True, text=True, timeout=30)
    assert echo.returncode == 0, "the service stopped answering after a garbage C-STORE"
    assert service.proc.poll() is None
