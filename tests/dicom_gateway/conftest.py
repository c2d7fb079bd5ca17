"""Fixtures for the gateway tests (helpers live in gateway_helpers.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.dicom_gateway.gateway_helpers import RunningSCP, start_scp, write_ct


@pytest.fixture
def ct_factory(tmp_path: Path) -> Callable[..., Path]:
    counter = iter(range(10_000))
    (tmp_path / "src").mkdir(exist_ok=True)

    def make(**kwargs: object) -> Path:
        n = next(counter)
        kwargs.setdefault("seed", n)
        return write_ct(tmp_path / "src" / f"ct{n:04d}.dcm", **kwargs)

    return make


@pytest.fixture
def running_scp(tmp_path: Path) -> Iterator[RunningSCP]:
    server = start_scp(tmp_path)
    try:
        yield server
    finally:
        server.scp.stop(grace_s=1)


