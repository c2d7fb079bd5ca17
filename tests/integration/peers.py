"""Helpers for running a real ``tamsoat serve`` process and real DCMTK peers on loopback."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on port {port} after {timeout} s")


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed: run scripts/setup (it installs DCMTK and dicom3tools)")
    return path


@dataclass
class Peer:
    port: int
    out_dir: Path
    proc: subprocess.Popen[bytes]


@dataclass
class Service:
    home: Path
    dicom_port: int
    web_url: str
    env: dict[str, str]
    proc: subprocess.Popen[bytes]
    log: Path

    def cli(self, *args: str) -> str:
        result = subprocess.run([str(BIN / "tamsoat"), *args], env=self.env, capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    def token(self, name: str, role: str) -> str:
        self.cli("users", "add", name, "--role", role)
        return self.cli("tokens", "create", name)

    def client(self, token: str) -> httpx.Client:
        return httpx.Client(base_url=self.web_url, headers={"Authorization": f"Bearer {token}"}, timeout=30)

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind runs (the crash case)."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        """SIGTERM and wait (a clean stop); SIGKILL if it does not end in 30 s."""
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.kill()


def write_config(home: Path, *, dicom_port: int, web_port: int, extra: str = "", stub_model: bool = True) -> Path:
    """A config.yaml for a loopback service in ``home``; ``extra`` is appended YAML. ``stub_model``
    registers a tiny ONNX model in ``home/models`` (the service validates its models at start-up),
    for tests that are about the gateway, not the model."""
    home.mkdir(parents=True, exist_ok=True)
    config = home / "config.yaml"
    text = (f"dicom: {{host: 127.0.0.1, port: {dicom_port}, ae_title: TAMSOAT}}\n"
            f"web: {{host: 127.0.0.1, port: {web_port}}}\n")
    if stub_model:
        from tests.inference.factory_model import write_model_folder

        write_model_folder(home / "models")
        text += f"models_dir: {home / 'models'}\n"
    config.write_text(text + extra)
    return config


def launch_service(home: Path, *, dicom_port: int, web_port: int, log: Path) -> Service:
    """Start ``tamsoat serve`` with ``home/config.yaml`` and wait until both ports listen.
    The log is appended to, so several runs (restarts) share one file."""
    env = {**os.environ, "TAMSOAT_HOME": str(home)}
    with log.open("ab") as sink:
        proc = subprocess.Popen([str(BIN / "tamsoat"), "serve", "--config", str(home / "config.yaml")],
                                env=env, stdout=sink, stderr=subprocess.STDOUT)
    svc = Service(home, dicom_port, f"http://127.0.0.1:{web_port}", env, proc, log)
    try:
        wait_for_port(dicom_port, proc)
        wait_for_port(web_port, proc)
    except BaseException:
        svc.kill()
        raise
    return svc
