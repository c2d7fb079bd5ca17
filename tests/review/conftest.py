"""Fixtures for the web review tests: an app on a temporary home with a spool, users with passwords,
a live server on loopback for the browser, and Debian's chromium driven by Playwright."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tamsoat.app import create_app
from tamsoat.core.db import Database
from tamsoat.core.settings import Destination, Settings
from tests.review.seed import add_users

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@dataclass
class Web:
    db: Database
    settings: Settings
    app: FastAPI
    spool: Path


def make_settings(tmp_path: Path, destinations: list[Destination] | None = None, **extra: Any) -> Settings:
    return Settings(home=tmp_path / "home", spool_dir=tmp_path / "spool", destinations=destinations or [],
                    institution="Bệnh viện Tầm Soát", **extra)


@pytest.fixture
def web(db: Database, tmp_path: Path) -> Web:
    settings = make_settings(tmp_path)
    add_users(db)
    return Web(db, settings, create_app(db, settings=settings), settings.spool_path)


@pytest.fixture
def client(web: Web) -> Iterator[TestClient]:
    with TestClient(web.app, base_url="http://testserver") as c:
        yield c


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    """uvicorn serving an app on 127.0.0.1 in a thread."""

    def __init__(self, app: FastAPI) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    access_log=False))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline:
                raise TimeoutError("uvicorn did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(15)


@pytest.fixture
def live(web: Web) -> Iterator[LiveServer]:
    with LiveServer(web.app) as server:
        yield server


@pytest.fixture
def browser() -> Iterator[Any]:
    """Debian's chromium, driven by Playwright (never a downloaded browser)."""
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: run scripts/setup (it installs Debian's chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


def need_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run scripts/setup (DCMTK and dicom3tools)")
    return path
