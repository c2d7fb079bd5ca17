"""Fixtures shared by every test package."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tamsoat.core.db import Database, migrate


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    """A migrated SQLite database in a temporary file."""
    url = f"sqlite:///{tmp_path / 'tamsoat.db'}"
    migrate(url)
    database = Database(url)
    yield database
    database.dispose()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` run where PyTorch sees a CUDA GPU and are deselected (not skipped) elsewhere.

    Deselected tests show in the summary as "deselected", so a missing feature never hides as a skip;
    ``-m gpu`` on a machine without a GPU selects them and they fail loudly.
    """
    if "gpu" in (config.getoption("-m") or ""):
        return
    gpu = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu:
        return
    import torch

    if torch.cuda.is_available():
        return
    config.hook.pytest_deselected(items=gpu)
    items[:] = [item for item in items if item.get_closest_marker("gpu") is None]
