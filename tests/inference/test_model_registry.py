"""Manifests are validated with clear messages; the registry picks versions and checks sha256."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from factory_model import manifest_dict, threshold_model, write_model_folder

from inference.manifest import ManifestError, load_manifest, parse_manifest, version_key
from inference.registry import ModelIntegrityError, ModelNotFoundError, Registry
from inference.runners import OnnxPredictor


def test_the_phantom_manifest_is_valid() -> None:
    manifest = parse_manifest(manifest_dict())
    assert manifest.input.spacing_mm == (1.25, 1.25, 1.25)
    assert manifest.input.patch_size == (96, 96, 96)
    assert manifest.input.overlap == 0.25
    assert manifest.model_file == "model.onnx"
    identity = manifest.identity()
    assert (identity.model_id, identity.version, identity.device_uid) == (
        "lung-nodule-phantom",
        "0.1.0",
        "2.25.123456789",
    )
    assert identity.weights_sha256 == "0" * 64


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"version": "1.0"}, r"version: '1.0' is not a semantic version"),
        ({"device_uid": "2.25.abc"}, r"device_uid: '2.25.abc' is not a DICOM UID"),
        ({"runtime": "tensorflow"}, r"runtime: Input should be 'onnx'"),
        ({"files": {"model.onnx": "abc"}}, r"files\.model\.onnx: 'abc' is not a sha256 digest"),
        ({"files": {"../model.onnx": "0" * 64}}, r"must be a relative path inside the model folder"),
        ({"files": {"a.onnx": "0" * 64, "b.onnx": "1" * 64}}, r"exactly one \.onnx file \(found 2\)"),
        ({"entrypoint": "other.onnx"}, r"entrypoint 'other.onnx' is not listed in files"),
        ({"colour": "blue"}, r"colour: Extra inputs are not permitted"),
        ({"input": {**manifest_dict()["input"], "window_hu": [400, -1000]}},
         r"input\.window_hu: window_hu low \(400\.0\) must be below high \(-1000\.0\)"),
        ({"input": {**manifest_dict()["input"], "patch_size": [96, 90, 96]}},
         r"input: patch_size \[96, 90, 96\] is not divisible by 8"),
        ({"input": {**manifest_dict()["input"], "spacing_mm": [1.25, 0, 1.25]}},
         r"input\.spacing_mm\.1: Input should be greater than 0"),
        ({"output": {**manifest_dict()["output"], "threshold": 1.5}}, r"output\.threshold: Input should be less"),
    ],
)
def test_manifest_errors_name_the_field(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ManifestError, match=r"^manifest is invalid: .*" + message):
        parse_manifest(manifest_dict(**change))


def test_missing_field_is_named() -> None:
    data = manifest_dict()
    del data["device_uid"]
    with pytest.raises(ManifestError, match=r"device_uid: Field required"):
        parse_manifest(data)


def test_manifest_file_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "manifest.yaml"
    path.write_text("id: [unclosed", encoding="utf-8")
    with pytest.raises(ManifestError, match=re.escape(f"manifest {path} is not valid YAML")):
        load_manifest(path)
    path.write_text("- a list\n", encoding="utf-8")
    with pytest.raises(ManifestError, match=re.escape(f"manifest {path} must be a mapping")):
        load_manifest(path)
    with pytest.raises(ManifestError, match="cannot read manifest"):
        load_manifest(tmp_path / "absent.yaml")


def test_semantic_version_order() -> None:
    versions = ["0.10.0", "0.9.0", "1.0.0-rc.1", "1.0.0", "1.0.0-alpha", "0.9.0-rc.2", "1.0.0-rc.10"]
    assert sorted(versions, key=version_key) == [
        "0.9.0-rc.2", "0.9.0", "0.10.0", "1.0.0-alpha", "1.0.0-rc.1", "1.0.0-rc.10", "1.0.0",
    ]


def test_registry_picks_newest_version(tmp_path: Path) -> None:
    for version in ("0.9.0", "0.10.0", "0.2.1"):
        write_model_folder(tmp_path, version=version)
    registry = Registry(tmp_path)
    assert registry.model_ids() == ["lung-nodule-phantom"]
    assert registry.versions("lung-nodule-phantom") == ["0.2.1", "0.9.0", "0.10.0"]
    assert registry.get("lung-nodule-phantom").manifest.version == "0.10.0"
    assert registry.get("lung-nodule-phantom", "0.9.0").manifest.version == "0.9.0"
    with pytest.raises(ModelNotFoundError, match=r"no model 'other' .*registered: lung-nodule-phantom"):
        registry.get("other")
    with pytest.raises(ModelNotFoundError, match=r"has no version '3.0.0'"):
        registry.get("lung-nodule-phantom", "3.0.0")


def test_manifest_must_live_in_its_id_and_version_folder(tmp_path: Path) -> None:
    folder = write_model_folder(tmp_path, version="0.1.0")
    data = yaml.safe_load((folder / "manifest.yaml").read_text())
    data["version"] = "0.2.0"
    (folder / "manifest.yaml").write_text(yaml.safe_dump(data))
    message = r"declares lung-nodule-phantom 0\.2\.0 but lives in lung-nodule-phantom/0\.1\.0"
    with pytest.raises(ManifestError, match=message):
        Registry(tmp_path)


def test_sha256_mismatch_is_caught(tmp_path: Path) -> None:
    folder = write_model_folder(tmp_path)
    registry = Registry(tmp_path)
    registry.verify("lung-nodule-phantom")
    threshold_model(folder / "model.onnx", level=0.4)  # same name, other weights
    with pytest.raises(ModelIntegrityError, match=r"file model.onnx has sha256 [0-9a-f]{64}, but the manifest says"):
        registry.verify("lung-nodule-phantom")
    with pytest.raises(ModelIntegrityError):
        registry.load("lung-nodule-phantom")
    (folder / "model.onnx").unlink()
    with pytest.raises(ModelIntegrityError, match=r"file model\.onnx listed in the manifest is missing"):
        registry.verify("lung-nodule-phantom")


def test_load_verifies_once_and_reuses_the_model(tmp_path: Path) -> None:
    write_model_folder(tmp_path)
    registry = Registry(tmp_path)
    first = registry.load("lung-nodule-phantom", threads=1)
    assert registry.load("lung-nodule-phantom", "0.1.0", threads=1) is first
    assert isinstance(first.predictor, OnnxPredictor)
    assert "CPUExecutionProvider" in first.predictor.providers
    assert first.identity.weights_sha256 == first.manifest.files["model.onnx"]
    x = np.full((1, 1, 8, 8, 8), 0.75, dtype=np.float32)
    np.testing.assert_allclose(first.predictor.predict(x), 5.0, rtol=1e-6)


def test_missing_models_folder_is_clear(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"models folder .* does not exist"):
        Registry(tmp_path / "nope")
