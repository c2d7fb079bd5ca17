"""``tamsoat models show|verify``: read the registry, recompute sha256s, one sentence and exit 1 on a mismatch."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tamsoat.cli import app
from tamsoat.cli_training import shipped_model

runner = CliRunner()
SHIPPED = Path(__file__).resolve().parents[2] / "models" / "lung-nodule-phantom"


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TAMSOAT_HOME", str(tmp_path / "home"))
    models = tmp_path / "models"
    shutil.copytree(SHIPPED, models / "lung-nodule-phantom")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"models_dir: {models}\n")
    return cfg


def test_show_prints_the_manifest(config: Path) -> None:
    result = runner.invoke(app, ["models", "show", "lung-nodule-phantom", "--json", "--config", str(config)])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["id"] == "lung-nodule-phantom" and shown["version"] == shipped_model().name  # the newest
    assert shown["weights_sha256"] == shown["files"][shown["model_file"]]
    assert shown["runtime"] in ("onnx", "torchscript", "monai-bundle")


def test_show_unknown_model_is_one_sentence(config: Path) -> None:
    result = runner.invoke(app, ["models", "show", "nope", "--config", str(config)])
    assert result.exit_code == 1 and "no model 'nope'" in result.output


def test_verify_passes_then_names_the_changed_file(config: Path, tmp_path: Path) -> None:
    ok = runner.invoke(app, ["models", "verify", "--config", str(config)])
    assert ok.exit_code == 0, ok.output
    assert "lung-nodule-phantom 0.1.0" in ok.output and f"lung-nodule-phantom {shipped_model().name}" in ok.output
    assert "match the manifest" in ok.output
    folder = tmp_path / "models" / "lung-nodule-phantom" / "0.1.0"
    onnx = folder / "model.onnx"
    onnx.write_bytes(onnx.read_bytes() + b"\0")
    bad = runner.invoke(app, ["models", "verify", "lung-nodule-phantom", "0.1.0", "--config", str(config)])
    assert bad.exit_code == 1
    assert "model.onnx has sha256" in bad.output and "but the manifest says" in bad.output
    onnx.unlink()
    gone = runner.invoke(app, ["models", "verify", "lung-nodule-phantom", "0.1.0", "--config", str(config)])
    assert gone.exit_code == 1 and "missing" in gone.output
