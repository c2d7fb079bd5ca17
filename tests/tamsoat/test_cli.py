from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tamsoat.cli import app

runner = CliRunner()


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TAMSOAT_HOME", str(tmp_path / "home"))
    for var in ("TAMSOAT_DICOM__PORT", "TAMSOAT_WORKERS"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path / "home"


def test_config_show_prints_effective_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "dicom: {port: 2104}\nworkers: 2\ndestinations:\n  - {name: pacs, ae_title: PACS, host: h, port: 1}\n"
    )
    monkeypatch.setenv("TAMSOAT_WORKERS", "4")
    result = runner.invoke(app, ["config", "show", "--config", str(cfg)])
    assert result.exit_code == 0, result.output
    shown = yaml.safe_load(result.output)
    assert shown["dicom"]["port"] == 2104 and shown["workers"] == 4
    assert shown["destinations"] == [{"name": "pacs", "ae_title": "PACS", "host": "h", "port": 1,
                                      "storage_commitment": False, "tls": False}]
    assert shown["effective"]["database_url"] == f"sqlite:///{home / 'tamsoat.db'}"


def test_bad_config_exits_2_with_a_sentence(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("dicom: {port: 99999}\n")
    result = runner.invoke(app, ["config", "show", "--config", str(cfg)])
    assert result.exit_code == 2
    assert "tamsoat: invalid configuration" in result.output and "port" in result.output


def test_users_and_tokens() -> None:
    assert runner.invoke(app, ["users", "add", "an", "--role", "radiologist"]).exit_code == 0
    again = runner.invoke(app, ["users", "add", "an", "--role", "radiologist"])
    assert again.exit_code == 1 and "already exists" in again.output
    bad_role = runner.invoke(app, ["users", "add", "bo", "--role", "janitor"])
    assert bad_role.exit_code == 2 and "unknown role" in bad_role.output
    token = runner.invoke(app, ["tokens", "create", "an"])
    assert token.exit_code == 0 and token.output.strip().startswith("tms_")
    ghost = runner.invoke(app, ["tokens", "create", "ghost"])
    assert ghost.exit_code == 1 and "no user named" in ghost.output
