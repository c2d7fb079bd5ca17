"""The same network as ONNX, TorchScript and a MONAI bundle gives the same findings through ``Engine``.

A small ``NoduleNet`` (fixed seed) is exported three ways from one set of weights; its head bias is
set so that the top few hundred voxels of a generated phantom series are above the threshold, which
gives several findings of different sizes. Each export is registered as its own model, routed and
analysed from the DICOM files like a study. Findings must agree: same count, centres within one
voxel, diameters within 10 %.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from inference.dicom_series import build_volume, read_instances
from inference.manifest import ManifestError, parse_manifest
from inference.networks import NoduleNet
from inference.pipeline import Engine, model_input
from inference.registry import Registry
from inference.runners import RunnerError, TorchPredictor, TorchScriptPredictor, torch_predictor
from inference.runners.bundle_predictor import BundlePredictor, BundleTrustError
from inference.runners.torch_predictor import cpu_has_native_bf16
from tamsoat.core.domain import Detection
from training.export import export_model_folder
from training.phantom import make_phantom
from training.series import write_ct_series

SPACING = 2.5
RUNTIMES = ("onnx", "torchscript", "monai-bundle")


def _manifest(model_id: str) -> dict[str, Any]:
    return {
        "id": model_id, "version": "1.0.0", "name": "test net", "manufacturer": "tamsoat",
        "device_uid": "2.25.42", "task": "lung-nodule-detection", "intended_use": "tests only",
        "runtime": "onnx",
        "input": {"spacing_mm": [SPACING] * 3, "window_hu": [-1000.0, 400.0], "patch_size": [48, 48, 48],
                  "divisible_by": 8, "overlap": 0.25},
        "output": {"kind": "logits", "threshold": 0.5, "min_diameter_mm": 6.0,
                   "label": {"scheme": "SCT", "value": "27925004", "meaning": "Nodule"}},
        "files": {"model.onnx": "0" * 64},
    }


def _routing(path: Path, model_id: str) -> Path:
    rules = {"rules": [{"name": "chest-ct", "model": model_id,
                        "match": {"Modality": "CT"}, "series": {"min_slices": 20}}]}
    path.write_text(yaml.safe_dump(rules))
    return path


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    phantom = make_phantom(5, shape_kji=(80, 128, 128), spacing_ijk=(2.5, 2.5, 2.5),
                           nodule_diameters_mm=[12.0, 18.0], noise_sigma_hu=20.0)
    return write_ct_series(phantom, tmp_path_factory.mktemp("series"), seed=5)


@pytest.fixture(scope="module")
def net(series: list[Path]) -> NoduleNet:
    """A random NoduleNet whose logits are positive on the top ~0.2 % of the phantom's voxels."""
    torch.manual_seed(0)
    net = NoduleNet((8, 16, 32)).eval()
    grid = model_input(build_volume(read_instances(series)), parse_manifest(_manifest("m")))
    with torch.inference_mode():
        logits = net(torch.from_numpy(_padded(grid.array))[None, None]).numpy()
    level = float(np.quantile(logits, 0.998))
    with torch.no_grad():
        assert net.head.bias is not None
        net.head.bias -= level
    return net


def _padded(a: np.ndarray) -> np.ndarray:
    shape = [-(-s // 8) * 8 for s in a.shape]
    out = np.zeros(shape, dtype=np.float32)
    out[: a.shape[0], : a.shape[1], : a.shape[2]] = a
    return out


@pytest.fixture(scope="module")
def models_dir(net: NoduleNet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    for runtime in RUNTIMES:
        export_model_folder(net, root / f"net-{runtime}" / "1.0.0", runtime, _manifest(f"net-{runtime}"))
    return root


def _same(a: Sequence[Detection], b: Sequence[Detection], voxel_mm: float = SPACING) -> None:
    assert len(a) == len(b), (a, b)
    for x in a:
        y = min(b, key=lambda d: math.dist(d.center_mm, x.center_mm))
        assert math.dist(x.center_mm, y.center_mm) <= voxel_mm
        assert y.diameter_mm == pytest.approx(x.diameter_mm, rel=0.1)


def test_three_runtimes_give_the_same_findings(series: list[Path], models_dir: Path, tmp_path: Path) -> None:
    found: dict[str, tuple[Detection, ...]] = {}
    for runtime in RUNTIMES:
        engine = Engine(models_dir, _routing(tmp_path / f"{runtime}.yaml", f"net-{runtime}"))
        outcome = engine.analyze_study({"1.2.3": series})
        assert outcome is not None
        result = outcome.result
        assert result.identity.model_id == f"net-{runtime}"
        manifest = engine.registry.get(f"net-{runtime}").manifest
        assert result.identity.weights_sha256 == manifest.weights_sha256
        assert len(result.input_sha256) == 64
        found[runtime] = result.detections
    assert len(found["onnx"]) >= 2, "the calibrated network should find several blobs"
    _same(found["onnx"], found["torchscript"])
    _same(found["onnx"], found["monai-bundle"])


def test_runtimes_are_chosen_by_the_manifest(models_dir: Path) -> None:
    registry = Registry(models_dir)
    assert type(registry.load("net-torchscript").predictor) is TorchScriptPredictor
    bundle = registry.load("net-monai-bundle")
    assert type(bundle.predictor) is BundlePredictor
    # The bundle names tamsoat's own network (inference.networks): declarative, it runs untrusted.
    assert not bundle.manifest.trusted
    assert bundle.identity.weights_sha256 == bundle.manifest.files["models/model.pt"]


def _fp32_and_bf16(net: NoduleNet, root: Path) -> tuple[TorchPredictor, TorchPredictor]:
    export_model_folder(net, root / "net-fp32" / "1.0.0", "torchscript", _manifest("net-fp32"))
    export_model_folder(net, root / "net-bf16" / "1.0.0", "torchscript", _manifest("net-bf16"), cpu_precision="bf16")
    registry = Registry(root)
    fp32, bf16 = registry.load("net-fp32", threads=2).predictor, registry.load("net-bf16", threads=2).predictor
    assert isinstance(fp32, TorchPredictor) and isinstance(bf16, TorchPredictor)
    return fp32, bf16


@pytest.mark.skipif(not cpu_has_native_bf16(), reason="this CPU has no native bf16: the fallback test covers it")
def test_bf16_on_cpu_runs_under_autocast_close_to_fp32(net: NoduleNet, tmp_path: Path) -> None:
    """bf16 is chosen per manifest; its logits stay close to fp32. Whether *findings* survive bf16 is a
    property of a trained model (margins), measured for the shipped one by ``benchmarks/inference.py``
    and ``tests/training/test_shipped_model.py``."""
    fp32, bf16 = _fp32_and_bf16(net, tmp_path / "models")
    assert fp32.precision == "fp32" and bf16.precision == "bf16"
    x = np.random.default_rng(1).random((1, 1, 32, 40, 48), dtype=np.float32)
    a, b = fp32.predict(x), bf16.predict(x)
    assert b.dtype == np.float32 and b.shape == x.shape
    assert not np.array_equal(a, b), "bf16 autocast should change the arithmetic"
    assert float(np.abs(a - b).max()) < 0.05 * float(a.std()) + 0.05


def test_bf16_falls_back_to_fp32_on_a_cpu_without_native_bf16(net: NoduleNet, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """Emulated bf16 is slower than fp32: on such a CPU the runner says so and runs fp32."""
    monkeypatch.setattr(torch_predictor, "cpu_has_native_bf16", lambda: False)
    with caplog.at_level(logging.WARNING, logger=torch_predictor.__name__):
        fp32, bf16 = _fp32_and_bf16(net, tmp_path / "models")
    assert fp32.precision == bf16.precision == "fp32"
    assert "event=model.precision_fallback" in caplog.text and "asked=bf16" in caplog.text
    x = np.random.default_rng(1).random((1, 1, 16, 16, 16), dtype=np.float32)
    np.testing.assert_array_equal(fp32.predict(x), bf16.predict(x))


@pytest.mark.gpu
def test_gpu_fp16_keeps_the_findings(series: list[Path], models_dir: Path, tmp_path: Path) -> None:
    """Where a GPU exists the torch runners pick it by themselves and run fp16 autocast."""
    assert torch.cuda.is_available()
    for runtime in ("torchscript", "monai-bundle"):
        loaded = Registry(models_dir).load(f"net-{runtime}")
        predictor = loaded.predictor
        assert isinstance(predictor, TorchPredictor)
        assert predictor.device.type == "cuda" and predictor.precision == "fp16"
    cpu = Engine(models_dir, _routing(tmp_path / "c.yaml", "net-onnx"))
    gpu = Engine(models_dir, _routing(tmp_path / "g.yaml", "net-torchscript"))
    a, b = cpu.analyze_study({"1": series}), gpu.analyze_study({"1": series})
    assert a is not None and b is not None
    _same(a.result.detections, b.result.detections)


# --- trust: an untrusted bundle's config never runs code -------------------------------------------------


def _bundle(root: Path, config: dict[str, Any], state: dict[str, torch.Tensor] | None = None) -> Path:
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    (root / "configs" / "metadata.json").write_text('{"version": "0.1.0"}')
    (root / "configs" / "inference.json").write_text(json.dumps(config))
    torch.save(state or {}, root / "models" / "model.pt")
    return root / "models" / "model.pt"


CONV = {"_target_": "torch.nn.Conv3d", "in_channels": 1, "out_channels": 1, "kernel_size": 3, "padding": 1}


def test_untrusted_declarative_bundle_runs(tmp_path: Path) -> None:
    conv = torch.nn.Conv3d(1, 1, 3, padding=1)
    config = {"channels": 1, "network_def": {**CONV, "in_channels": "@channels"}}
    weights = _bundle(tmp_path / "b", config, conv.state_dict())
    predictor = BundlePredictor(weights, trusted=False, device="cpu")
    x = np.random.default_rng(0).random((1, 1, 8, 8, 8), dtype=np.float32)
    with torch.inference_mode():
        expected = conv(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(predictor.predict(x), expected, atol=1e-6)


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ({"network_def": {**CONV, "out_channels": "$open('MARKER', 'w').close() or 1"}}, "Python expression"),
        ({"n": "$__import__('os').getpid()", "network_def": {**CONV, "out_channels": "@n"}}, "Python expression"),
        ({"network_def": {"_target_": "os.system", "command": "touch MARKER"}}, "outside"),
        ({"network_def": {"_target_": "training.export.export_bundle"}}, "trusted: true"),
        ({"network_def": {**CONV, "_requires_": "$print(1)"}}, "not allowed"),
        ({"network_def": "%other.json#net"}, "macro"),
    ],
)
def test_untrusted_bundle_that_would_run_code_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         config: dict[str, Any], words: str) -> None:
    monkeypatch.chdir(tmp_path)
    weights = _bundle(tmp_path / "b", config)
    with pytest.raises(BundleTrustError, match=words):
        BundlePredictor(weights, trusted=False, device="cpu")
    assert not (tmp_path / "MARKER").exists()


def test_trusted_bundle_may_evaluate_expressions(tmp_path: Path) -> None:
    conv = torch.nn.Conv3d(1, 1, 3, padding=1)
    config = {"network_def": {**CONV, "out_channels": "$0 + 1"}}
    weights = _bundle(tmp_path / "b", config, conv.state_dict())
    BundlePredictor(weights, trusted=True, device="cpu")


def test_bundle_with_wrong_weights_says_so(tmp_path: Path) -> None:
    weights = _bundle(tmp_path / "b", {"network_def": CONV}, {"nope": torch.zeros(1)})
    with pytest.raises(RunnerError, match="does not fit network_def"):
        BundlePredictor(weights, device="cpu")


def test_manifest_runtimes_and_defaults() -> None:
    base = _manifest("m")
    assert parse_manifest({**base, "files": {"model.onnx": "a" * 64}}).model_file == "model.onnx"
    ts = parse_manifest({**base, "runtime": "torchscript", "files": {"model.ts": "a" * 64}})
    assert ts.model_file == "model.ts" and ts.precision.cpu == "fp32" and ts.precision.gpu == "fp16"
    bundle = parse_manifest({**base, "runtime": "monai-bundle", "files": {
        "configs/inference.json": "a" * 64, "configs/metadata.json": "b" * 64, "models/model.pt": "c" * 64}})
    assert bundle.model_file == "models/model.pt" and bundle.weights_sha256 == "c" * 64 and not bundle.trusted
    with pytest.raises(ManifestError, match="trusted applies to monai-bundle"):
        parse_manifest({**base, "trusted": True, "files": {"model.onnx": "a" * 64}})
    with pytest.raises(ManifestError, match="bf16 needs a PyTorch runtime"):
        parse_manifest({**base, "precision": {"cpu": "bf16"}, "files": {"model.onnx": "a" * 64}})
    with pytest.raises(ManifestError, match=r"exactly one models/model\.pt"):
        parse_manifest({**base, "runtime": "monai-bundle", "files": {"model.onnx": "a" * 64}})
