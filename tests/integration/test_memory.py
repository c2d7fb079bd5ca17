"""Memory stays flat while the service receives 10,000 instances (RSS of the `tamsoat serve` process,
sampled as DCMTK storescu sends them over several associations)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from tests.dicom_gateway.gateway_helpers import make_ct_dataset
from tests.integration.peers import free_port, launch_service, need, write_config

pytestmark = [pytest.mark.slow, pytest.mark.dcmtk]

N_INSTANCES = 10_000
ROUNDS = 5  # RSS is sampled after each round of N_INSTANCES / ROUNDS
PARALLEL = 4


def make_instances(folder: Path, n: int) -> list[Path]:
    """``n`` small CT instances of one study: one encoded template, with a fixed-width SOP Instance UID
    (no leading zero) substituted per file (fast, and each file is a valid, distinct instance)."""
    folder.mkdir()
    root = "1.2.826.0.1.3680043.10.511.9."
    template_uid = root + "9" * 9
    # 64x64: 8 KiB of pixels, so keeping any part of each data set alive would show (80 MiB in all).
    ds = make_ct_dataset(study_uid=generate_uid(), series_uid=generate_uid(), sop_uid=template_uid, seed=1, size=64)
    template = folder / "template.dcm"
    ds.save_as(template, enforce_file_format=True)
    data = template.read_bytes()
    template.unlink()
    placeholder = template_uid.encode()
    assert data.count(placeholder) == 2  # File Meta and data set
    paths = []
    for i in range(n):
        path = folder / f"{i:05d}.dcm"
        path.write_bytes(data.replace(placeholder, (root + str(100_000_000 + i)).encode()))
        paths.append(path)
    return paths


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def send(port: int, files: list[Path]) -> None:
    groups = [files[i::PARALLEL] for i in range(PARALLEL)]
    procs = [subprocess.Popen([need("storescu"), "-aet", "MODALITY", "-aec", "TAMSOAT", "127.0.0.1", str(port),
                               *map(str, g)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              env={**os.environ, "TCP_NODELAY": "1"}) for g in groups]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-2000:]


def test_memory_stays_flat_over_10000_instances(tmp_path: Path) -> None:
    files = make_instances(tmp_path / "src", N_INSTANCES)
    home = tmp_path / "home"
    dicom_port, web_port = free_port(), free_port()
    write_config(home, dicom_port=dicom_port, web_port=web_port, extra="quiet_period_s: 3600\nlog_level: WARNING\n")
    svc = launch_service(home, dicom_port=dicom_port, web_port=web_port, log=tmp_path / "service.log")
    samples = []
    try:
        per_round = N_INSTANCES // ROUNDS
        for r in range(ROUNDS):
            send(dicom_port, files[r * per_round:(r + 1) * per_round])
            samples.append(rss_kib(svc.proc.pid))
    finally:
        svc.stop()
    print("RSS after each round (MiB):", [round(s / 1024, 1) for s in samples])
    # The first round warms caches (SQLAlchemy statement cache, SQLite page cache, malloc arenas of
    # the association threads). After it, 8,000 more instances may add allocator noise, not data:
    # holding on to even one data set per instance would add 64 MiB.
    growth_mib = (samples[-1] - samples[0]) / 1024
    assert growth_mib < 24, f"RSS grew {growth_mib:.1f} MiB over {N_INSTANCES - per_round} instances: {samples}"
    stored = list((home / "spool").rglob("*.dcm"))
    assert len(stored) == N_INSTANCES
