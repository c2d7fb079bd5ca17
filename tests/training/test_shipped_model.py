"""The shipped model folder: manifest consistent with the ONNX file, and the ONNX runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import yaml

from training.export import sha256_file

MODEL_DIR = Path(__file__).resolve().parents[2] / "models" / "lung-nodule-phantom" / "0.1.0"


def test_manifest_sha256_matches_model() -> None:
    manifest = yaml.safe_load((MODEL_DIR / "manifest.yaml").read_text())
    assert manifest["id"] == "lung-nodule-phantom" and manifest["version"] == "0.1.0"
    assert manifest["runtime"] == "onnx" and manifest["output"]["kind"] == "logits"
    assert manifest["files"]["model.onnx"] == sha256_file(MODEL_DIR / "model.onnx")
    assert str(manifest["device_uid"]).startswith("2.25.")
    assert "Not for clinical use" in manifest["intended_use"]
    assert (MODEL_DIR / "model.onnx").stat().st_size < 5 * 1024 * 1024
    assert "NOT for clinical use" in (MODEL_DIR / "model_card.md").read_text()


def test_shipped_onnx_runs_with_dynamic_size() -> None:
    manifest = yaml.safe_load((MODEL_DIR / "manifest.yaml").read_text())
    d = int(manifest["input"]["divisible_by"])
    session = ort.InferenceSession(str(MODEL_DIR / "model.onnx"), providers=["CPUExecutionProvider"])
    x = np.zeros((1, 1, 2 * d, 3 * d, 4 * d), dtype=np.float32)
    (out,) = session.run(None, {session.get_inputs()[0].name: x})
    assert out.shape == x.shape and np.all(np.isfinite(out))
