from __future__ import annotations

from pathlib import Path

import pytest

from tamsoat.core.settings import ConfigError, load_settings


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_precedence_file_then_environment_then_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = write(tmp_path / "c.yaml", "quiet_period_s: 7\nworkers: 3\ndicom:\n  port: 2000\n  ae_title: FROMFILE\n")
    s = load_settings(cfg)
    assert (s.quiet_period_s, s.workers, s.dicom.port, s.dicom.ae_title) == (7, 3, 2000, "FROMFILE")

    monkeypatch.setenv("TAMSOAT_WORKERS", "5")
    monkeypatch.setenv("TAMSOAT_DICOM__PORT", "3000")
    s = load_settings(cfg)
    assert (s.workers, s.dicom.port, s.dicom.ae_title) == (5, 3000, "FROMFILE")

    s = load_settings(cfg, workers=9, dicom={"port": 4000})
    assert (s.workers, s.dicom.port, s.dicom.ae_title) == (9, 4000, "FROMFILE")


def test_home_holds_the_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAMSOAT_HOME", str(tmp_path / "h"))
    s = load_settings()
    assert s.db_url == f"sqlite:///{tmp_path / 'h' / 'tamsoat.db'}"
    assert s.spool_path == tmp_path / "h" / "spool"


def test_destinations_are_validated(tmp_path: Path) -> None:
    cfg = write(tmp_path / "c.yaml", "destinations:\n  - {name: pacs, ae_title: PACS, host: 127.0.0.1, port: 104}\n")
    assert load_settings(cfg).destinations[0].ae_title == "PACS"
    bad = write(tmp_path / "b.yaml", "destinations:\n  - {name: pacs, ae_title: PACS, host: h, port: 70000}\n")
    with pytest.raises(ConfigError, match="port"):
        load_settings(bad)
    dup = write(tmp_path / "d.yaml", "destinations:\n  - {name: a, ae_title: A, host: h, port: 1}\n"
                                     "  - {name: a, ae_title: B, host: h, port: 2}\n")
    with pytest.raises(ConfigError, match="unique"):
        load_settings(dup)


def test_unknown_keys_and_missing_file_are_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="quiet_periodd"):
        load_settings(write(tmp_path / "t.yaml", "quiet_periodd: 3\n"))
