"""benchmarks/ingest.py runs end to end on a small series and prints every figure it promises."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.dcmtk]

ROOT = Path(__file__).resolve().parents[2]
RATE = r"\s+[0-9.]+ inst/s\s+[0-9.]+ MB/s"


def _run(tmp_path: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "ingest.py"), "--instances", "40", "--rounds", "1",
         "--data", str(tmp_path / "series"), "--work", str(tmp_path), *args],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_receive_and_send_figures(tmp_path: Path) -> None:
    out = _run(tmp_path)
    for parallel in (1, 4):
        assert re.search(rf"DCMTK storescp, {parallel} assoc \(no fsync\){RATE}", out), out
        for fsync in ("on", "off"):
            assert re.search(rf"tamsoat SCP, {parallel} assoc, fsync {fsync}{RATE}\s+ratio [0-9.]+", out), out
        assert re.search(rf"durable file writes alone, {parallel} thread\(s\){RATE}\s+ratio [0-9.]+", out), out
        if shutil.which("cc") or shutil.which("gcc"):
            assert re.search(rf"DCMTK storescp, {parallel} assoc, durable{RATE}\s+ratio [0-9.]+", out), out
            assert "vs durable DCMTK" in out
    assert re.search(rf"tamsoat SCU \(send_files\){RATE}\s+ratio [0-9.]+", out), out


def test_phases_account_for_the_receiving_path(tmp_path: Path) -> None:
    out = _run(tmp_path, "--only", "phases")
    for parallel in (1, 4):
        assert f"{parallel} association(s):" in out
    timed = dict(re.findall(r"^\s+(\S.*?)\s{2,}([0-9.]+) ms$", out, flags=re.MULTILINE))
    assert float(timed["ingest: header, spool, row"]) > 0
    assert float(timed["fsync (file and directory)"]) > 0  # the spool fsyncs
    assert float(timed["the row's statements"]) > 0
