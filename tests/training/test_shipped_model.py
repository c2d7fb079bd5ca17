"""The shipped model folders: manifest consistent with its files, the ONNX runs, and on a fixed phantom
the ONNX model and the PyTorch network rebuilt from it find the same nodules; a version shipped as a
bf16 MONAI bundle finds, as shipped, what its ONNX file finds in fp32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import yaml

from inference.manifest import Manifest, PrecisionSpec, load_manifest
from inference.pipeline import detect_in_volume
from inference.registry import LoadedModel, RegisteredModel, create_predictor
from inference.runners.torch_predictor import TorchPredictor
from training.export import sha256_file
from training.phantom import make_phantom
from training.warm_start import network_from_onnx

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "lung-nodule-phantom"
VERSIONS = sorted(p.name for p in SHIPPED.iterdir() if (p / "manifest.yaml").is_file())


def test_there_is_a_shipped_model() -> None:
    assert VERSIONS, f"no model folder under {SHIPPED}"


@pytest.mark.parametrize("version", VERSIONS)
def test_manifest_sha256_matches_model(version: str) -> None:
    folder = SHIPPED / version
    manifest = yaml.safe_load((folder / "manifest.yaml").read_text())
    assert manifest["id"] == "lung-nodule-phantom" and manifest["version"] == version
    assert manifest["runtime"] in ("onnx", "monai-bundle") and manifest["output"]["kind"] == "logits"
    assert "model.onnx" in manifest["files"] and not manifest.get("trusted", False)
    assert all(sha256_file(folder / name) == digest for name, digest in manifest["files"].items())
    assert str(manifest["device_uid"]).startswith("2.25.")
    assert "Not for clinical use" in manifest["intended_use"]
    assert (folder / "model.onnx").stat().st_size < 5 * 1024 * 1024
    assert "NOT for clinical use" in (folder / "model_card.md").read_text()


def test_every_version_has_its_own_device_uid() -> None:
    uids = [yaml.safe_load((SHIPPED / v / "manifest.yaml").read_text())["device_uid"] for v in VERSIONS]
    assert len(set(uids)) == len(uids)


@pytest.mark.parametrize("version", VERSIONS)
def test_shipped_onnx_runs_with_dynamic_size(version: str) -> None:
    folder = SHIPPED / version
    manifest = yaml.safe_load((folder / "manifest.yaml").read_text())
    d = int(manifest["input"]["divisible_by"])
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    x = np.zeros((1, 1, 2 * d, 3 * d, 4 * d), dtype=np.float32)
    (out,) = session.run(None, {session.get_inputs()[0].name: x})
    assert out.shape == x.shape and np.all(np.isfinite(out))


def as_onnx(manifest: Manifest) -> Manifest:
    """The same model folder run through its model.onnx by ONNX Runtime (fp32), whatever the manifest runs."""
    return manifest.model_copy(update={"runtime": "onnx", "precision": PrecisionSpec(), "entrypoint": "model.onnx"})


@pytest.mark.parametrize("version", VERSIONS)
def test_onnx_and_pytorch_find_the_same_nodules_on_a_fixed_phantom(version: str) -> None:
    folder = SHIPPED / version
    manifest = as_onnx(load_manifest(folder / "manifest.yaml"))
    manifest = manifest.model_copy(update={"input": manifest.input.model_copy(update={"patch_size": (96, 160, 160)})})
    registered = RegisteredModel(manifest, folder)
    phantom = make_phantom(4, shape_kji=(80, 224, 224), spacing_ijk=(1.25, 1.25, 1.25), n_nodules=2,
                           nodule_diameters_mm=[10.0, 16.0], nodule_kinds=["solid", "solid"])
    onnx_found = detect_in_volume(phantom.volume, LoadedModel(manifest, registered.identity,
                                                              create_predictor(registered, threads=2, device="cpu")))
    torch_net = TorchPredictor(network_from_onnx(folder / "model.onnx"), source=version, device="cpu", threads=2)
    torch_found = detect_in_volume(phantom.volume, LoadedModel(manifest, registered.identity, torch_net))
    assert len(onnx_found) == len(torch_found) >= 1
    for a, b in zip(onnx_found, torch_found, strict=True):
        assert np.allclose(a.center_mm, b.center_mm, atol=0.05) and abs(a.confidence - b.confidence) < 1e-3
    # The network sees the phantom's 16 mm nodule (this is the shipped model, not a stub).
    big = max(phantom.nodules, key=lambda n: n.diameter_mm)
    assert any(np.linalg.norm(np.subtract(d.center_mm, big.center_mm)) <= big.diameter_mm / 2 for d in onnx_found)


BUNDLED = [v for v in VERSIONS
           if yaml.safe_load((SHIPPED / v / "manifest.yaml").read_text())["runtime"] == "monai-bundle"]


@pytest.mark.parametrize("version", BUNDLED)
def test_shipped_bundle_as_shipped_finds_what_its_onnx_finds(version: str) -> None:
    """The configuration the service runs (the bundle, bf16 where the CPU has it) against fp32 ONNX Runtime
    on the same weights: the same findings, centres within a voxel, confidences close."""
    folder = SHIPPED / version
    shipped = load_manifest(folder / "manifest.yaml")
    patch = {"input": shipped.input.model_copy(update={"patch_size": (96, 160, 160)})}
    shipped = shipped.model_copy(update=patch)
    phantom = make_phantom(5, shape_kji=(80, 224, 224), spacing_ijk=(1.25, 1.25, 1.25), n_nodules=3,
                           nodule_diameters_mm=[7.0, 11.0, 16.0], nodule_kinds=["solid", "part-solid", "solid"])
    found = {}
    for name, manifest in (("shipped", shipped), ("onnx", as_onnx(shipped))):
        registered = RegisteredModel(manifest, folder)
        runner = create_predictor(registered, threads=2, device="cpu")
        found[name] = detect_in_volume(phantom.volume, LoadedModel(manifest, registered.identity, runner))
    assert len(found["shipped"]) == len(found["onnx"]) >= 2
    voxel = min(shipped.input.spacing_mm)
    for a, b in zip(found["shipped"], found["onnx"], strict=True):
        assert np.linalg.norm(np.subtract(a.center_mm, b.center_mm)) <= voxel
        assert abs(a.confidence - b.confidence) < 0.05
