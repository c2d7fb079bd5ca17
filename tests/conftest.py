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
