"""``tamsoat serve`` stops cleanly on SIGTERM (systemd, docker stop): its stop runs (the SCP, the
instance writer and the workers are closed) and is logged; before, uvicorn re-raised the signal with
the default handler and the process died before the service's stop."""

from __future__ import annotations

import re
import signal
import subprocess
from pathlib import Path

import pytest

from tests.integration.peers import free_port, launch_service, need, write_config

pytestmark = [pytest.mark.dcmtk]


def test_sigterm_stops_the_service_cleanly(tmp_path: Path) -> None:
    home = tmp_path / "home"
    dicom_port, web_port = free_port(), free_port()
    write_config(home, dicom_port=dicom_port, web_port=web_port)
    log = tmp_path / "service.log"
    svc = launch_service(home, dicom_port=dicom_port, web_port=web_port, log=log)
    try:
        echo = subprocess.run([need("echoscu"), "-aec", "TAMSOAT", "127.0.0.1", str(dicom_port)],
                              capture_output=True, text=True, timeout=30)
        assert echo.returncode == 0, echo.stderr
        svc.proc.send_signal(signal.SIGTERM)
        code = svc.proc.wait(30)
    finally:
        if svc.proc.poll() is None:
            svc.kill()
    text = log.read_text()
    # what starting made is out of the garbage collector's sight (no long pauses while receiving)
    frozen = int(re.search(r"service\.started .* frozen_objects=(\d+)", text).group(1))  # type: ignore[union-attr]
    assert frozen > 100_000
    assert "service.stopping signal=SIGTERM" in text
    assert "dicom.scp.stopped" in text
    assert text.rstrip().endswith("service.stopped"), text[-500:]
    assert code == 128 + signal.SIGTERM
