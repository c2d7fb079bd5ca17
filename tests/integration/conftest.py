"""Fixtures: a real ``tamsoat serve`` process and a DCMTK storescp destination on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.peers import BIN, Peer, Service, free_port, need, wait_for_port


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[Peer]:
    """DCMTK storescp as the destination PACS."""
    out = tmp_path / "pacs"
    out.mkdir()
    port = free_port()
    proc = subprocess.Popen([need("storescp"), "--aetitle", "PACS", "--output-directory", str(out), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port, proc)
    yield Peer(port, out, proc)
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def service(tmp_path: Path, storescp: Peer) -> Iterator[Service]:
    home = tmp_path / "home"
    home.mkdir()
    dicom_port, web_port = free_port(), free_port()
    (home / "config.yaml").write_text(
        f"quiet_period_s: 2\n"
        f"dicom: {{host: 127.0.0.1, port: {dicom_port}, ae_title: TAMSOAT}}\n"
        f"web: {{host: 127.0.0.1, port: {web_port}}}\n"
        f"send_retry_base_s: 1\n"
        f"destinations:\n  - {{name: pacs, ae_title: PACS, host: 127.0.0.1, port: {storescp.port}}}\n"
    )
    env = {**os.environ, "TAMSOAT_HOME": str(home)}
    log = tmp_path / "service.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen([str(BIN / "tamsoat"), "serve", "--config", str(home / "config.yaml")],
                                env=env, stdout=sink, stderr=subprocess.STDOUT)
    svc = Service(home, dicom_port, f"http://127.0.0.1:{web_port}", env, proc, log)
    try:
        wait_for_port(web_port, proc)
        wait_for_port(dicom_port, proc)
        yield svc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        print(log.read_text()[-5000:])
