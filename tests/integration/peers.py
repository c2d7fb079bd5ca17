"""Helpers for running a real ``tamsoat serve`` process and real DCMTK peers on loopback."""

from __future__ import annotations

import shutil
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
