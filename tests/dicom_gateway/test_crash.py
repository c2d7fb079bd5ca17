"""Crash test: ``kill -9`` the real service again and again while DCMTK ``storescu`` sends 1,000
instances. Every instance that storescu was told was stored must be in the spool, byte-identical,
with its database row; no temporary file may remain; nothing is recorded twice."""

from __future__ import annotations

import hashlib
import random
import re
import subprocess
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from dicom_gateway.spool import TEMP_SUFFIX
from tamsoat.core.db import Database
from tamsoat.core.tables import Instance
from tests.dicom_gateway.gateway_helpers import dataset_bytes, make_ct_dataset
from tests.integration.peers import Service, free_port, launch_service, need, write_config

pytestmark = [pytest.mark.slow, pytest.mark.dcmtk]

N_INSTANCES = 1000
KILLS = 4

_SENDING = re.compile(r"^I: Sending file: (.+)$")
_RESPONSE = re.compile(r"^I: Received Store Response \((.+)\)")


def make_instances(folder: Path, n: int) -> list[Path]:
    """``n`` 64x64 CT instances of one study in two series."""
    folder.mkdir()
    study = generate_uid()
    series = [generate_uid(), generate_uid()]
    paths = []
    for i in range(n):
        ds = make_ct_dataset(study_uid=study, series_uid=series[i % 2], seed=i, size=64)
        path = folder / f"ct{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def stored_by_storescu(output: str) -> set[Path]:
    """The files storescu logged a success response for (it sends one at a time, in order)."""
    stored: set[Path] = set()
    current: Path | None = None
    for line in output.splitlines():
        if m := _SENDING.match(line.strip()):
            current = Path(m.group(1))
        elif (m := _RESPONSE.match(line.strip())) and current is not None:
            if m.group(1) == "Success":
                stored.add(current)
            current = None
    return stored


def storescu(port: int, files: list[Path]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [need("storescu"), "-v", "-aet", "MODALITY", "-aec", "TAMSOAT", "-to", "20", "-ta", "20", "-td", "20",
         "127.0.0.1", str(port), *map(str, files)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def _read_until_responses(sender: subprocess.Popen[str], responses: int) -> str:
    """storescu's output up to its ``responses``-th store response (or its end), read as it comes."""
    assert sender.stdout is not None
    lines: list[str] = []
    count = 0
    for line in sender.stdout:
        lines.append(line)
        if _RESPONSE.match(line.strip()):
            count += 1
            if count >= responses:
                break
    return "".join(lines)


def test_kill_9_during_storescu_loses_nothing_that_was_acknowledged(tmp_path: Path) -> None:
    files = make_instances(tmp_path / "src", N_INSTANCES)
    home = tmp_path / "home"
    dicom_port, web_port = free_port(), free_port()
    # A long quiet period: no analysis runs, the test is about the gateway.
    write_config(home, dicom_port=dicom_port, web_port=web_port, extra="quiet_period_s: 3600\n")
    log = tmp_path / "service.log"
    rng = random.Random(3)
    acknowledged: set[Path] = set()
    kills_done = 0
    svc: Service = launch_service(home, dicom_port=dicom_port, web_port=web_port, log=log)
    try:
        for _ in range(KILLS):
            pending = [f for f in files if f not in acknowledged]
            sender = storescu(dicom_port, pending)
            # Kill after a random number of responses (not after a time: the gateway's speed varies).
            seen = _read_until_responses(sender, rng.randint(20, 150))
            svc.kill()  # SIGKILL while storescu is sending
            kills_done += 1
            out, _ = sender.communicate(timeout=60)
            acknowledged |= stored_by_storescu(seen + out)
            svc = launch_service(home, dicom_port=dicom_port, web_port=web_port, log=log)
        assert 0 < len(acknowledged) < N_INSTANCES, "the kills should land in the middle of the send"

        pending = [f for f in files if f not in acknowledged]
        sender = storescu(dicom_port, pending)
        out, _ = sender.communicate(timeout=120)
        assert sender.returncode == 0, out[-3000:]
        final = stored_by_storescu(out)
        assert final == set(pending)
        acknowledged |= final
    finally:
        svc.stop()
    assert kills_done == KILLS

    spool = home / "spool"
    leftovers = [p for p in spool.rglob(f"*{TEMP_SUFFIX}")]
    assert leftovers == [], f"temporary files left behind: {leftovers[:5]}"

    db = Database(f"sqlite:///{home / 'tamsoat.db'}")
    try:
        with db.session() as s:
            rows = {r.sop_instance_uid: (r.path, r.sha256, r.version)
                    for r in s.scalars(select(Instance)).all()}
            row_count = s.scalar(select(func.count()).select_from(Instance))
    finally:
        db.dispose()
    assert row_count == len(rows) == N_INSTANCES, "every instance recorded exactly once"
    from pydicom import dcmread

    for src in sorted(acknowledged):
        sop = str(dcmread(src, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)
        assert sop in rows, f"{src.name} was acknowledged but has no database row"
        rel, sha, version = rows[sop]
        expected = dataset_bytes(src)
        stored = dataset_bytes(spool / rel)
        assert version == 1
        assert hashlib.sha256(stored).hexdigest() == sha == hashlib.sha256(expected).hexdigest(), src.name
    assert log.read_text().count("service.started") == KILLS + 1
