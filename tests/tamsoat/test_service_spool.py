"""``tamsoat serve`` builds its spool from the settings: received files leave the page cache unless
``spool_page_cache`` keeps them."""

from __future__ import annotations

from pathlib import Path

import pytest

from tamsoat.core.settings import Settings
from tamsoat.service import Service


@pytest.mark.parametrize("keep", [False, True])
def test_spool_page_cache_setting_reaches_the_spool(tmp_path: Path, keep: bool) -> None:
    service = Service(Settings(home=tmp_path / "home", spool_page_cache=keep))
    try:
        assert service.spool.drop_cached is not keep
        assert service.spool.fsync
    finally:
        service.stop()
