"""Tiny end-to-end training: steps, checkpoints, resume, ONNX export with parity."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import yaml

from inference.networks import NoduleNet
from inference.registry import Registry
from inference.runners.bundle_predictor import BundlePredictor
from training.config import load_config
from training.dataset import PatchSampler, build_cache
from training.export import export_model_folder, export_onnx, load_trained, sha256_file
from training.export import main as export_main
from training.train import LAST, train
from training.warm_start import starting_network

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "training" / "configs" / "tiny.yaml"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("tiny")
    return out, train(TINY, out, resume=False)


def test_network_is_fully_convolutional() -> None:
    net = NoduleNet((4, 8, 8)).eval()
    with torch.inference_mode():
        for shape in [(16, 24, 32), (40, 8, 16)]:
            assert net(torch.zeros(1, 1, *shape)).shape == (1, 1, *shape)


def test_patches_have_labels_where_the_nodules_are(tmp_path: Path) -> None:
    cfg = load_config(TINY)
    cases = build_cache(cfg.data, tmp_path, [cfg.data.seed_offset])
    sampling = cfg.sampling.model_copy(update={"nodule_fraction": 1.0, "vessel_fraction": 0.0,
                                               "small_nodule_reference_mm": 20.0})
    sampler = PatchSampler(cases, sampling, np.random.default_rng(0))
    images, labels, weights = sampler.batch(4)
    # Nodules under the reference diameter weigh more than background, which weighs 1.
    assert np.all(weights[labels == 0] == 1.0) and np.all(weights[labels > 0] > 1.0)
    assert images.shape == labels.shape == (4, 1, *cfg.sampling.patch_size)
    assert all(labels[b].sum() > 0 for b in range(4))
    # Labelled voxels are nodule tissue, far brighter than lung (-850 HU): above -700 HU on average.
    window = cfg.data.window_hu
    assert images[labels > 0].mean() > (-700.0 - window[0]) / (window[1] - window[0])


def test_tiny_training_writes_checkpoint_and_metrics(tiny_run: tuple[Path, Path]) -> None:
    out, best = tiny_run
    cfg = load_config(TINY)
    assert best.exists() and (out / LAST).exists()
    state = torch.load(out / LAST, weights_only=False)
    assert state["step"] == cfg.steps
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == list(range(cfg.log_every, cfg.steps + 1, cfg.log_every))
    assert any("val_dice" in r for r in records)
    assert all(np.isfinite(r.get("loss", 0.0)) for r in records)


def test_resume_continues_from_the_last_checkpoint(tiny_run: tuple[Path, Path], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = tiny_run
    data = yaml.safe_load(TINY.read_text())
    data["steps"] = data["steps"] + 3
    longer = tmp_path / "longer.yaml"
    longer.write_text(yaml.safe_dump(data))
    before = len((out / "metrics.jsonl").read_text().splitlines())
    train(longer, out, resume=True)
    assert "resumed from" in capsys.readouterr().out
    assert torch.load(out / LAST, weights_only=False)["step"] == data["steps"]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(records) > before  # appended, not restarted
    assert [r["step"] for r in records if "loss" in r][-1] == data["steps"]


def test_export_writes_onnx_matching_pytorch(tiny_run: tuple[Path, Path], tmp_path: Path) -> None:
    _, best = tiny_run
    model = export_onnx(best, tmp_path / "model", model_id="lung-nodule-phantom", version="0.0.1")
    manifest = yaml.safe_load((model.parent / "manifest.yaml").read_text())
    assert manifest["files"]["model.onnx"] == sha256_file(model)
    assert manifest["device_uid"].startswith("2.25.")
    assert manifest["input"]["divisible_by"] == NoduleNet.stride
    assert (model.parent / "model_card.md").read_text().count("NOT for clinical use") == 1
    net, _, _ = load_trained(best)
    x = np.random.default_rng(0).random((1, 1, 24, 40, 56), dtype=np.float32)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": x})[0]
    with torch.inference_mode():
        expected = net(torch.from_numpy(x)).numpy()
    assert got.shape == expected.shape
    assert np.max(np.abs(got - expected)) < 1e-3
    again = export_onnx(best, tmp_path / "model2", model_id="lung-nodule-phantom", version="0.0.1")
    assert yaml.safe_load((again.parent / "manifest.yaml").read_text())["device_uid"] != manifest["device_uid"]


def test_export_as_a_bf16_bundle_runs_the_same_weights_untrusted(tiny_run: tuple[Path, Path], tmp_path: Path) -> None:
    """``runtime="monai-bundle"``: the folder is also a MONAI bundle the registry runs (declarative, so not
    trusted), every file is listed with its sha256, and the bundle computes what model.onnx computes."""
    _, best = tiny_run
    model = export_onnx(best, tmp_path / "lung-nodule-phantom" / "0.0.1", model_id="lung-nodule-phantom",
                        version="0.0.1", runtime="monai-bundle", cpu_precision="bf16")
    folder = model.parent
    manifest = yaml.safe_load((folder / "manifest.yaml").read_text())
    assert manifest["runtime"] == "monai-bundle" and manifest["precision"] == {"cpu": "bf16"}
    assert "trusted" not in manifest
    assert set(manifest["files"]) == {"configs/metadata.json", "configs/inference.json", "models/model.pt",
                                      "model.onnx"}
    assert all(sha256_file(folder / name) == digest for name, digest in manifest["files"].items())
    assert "MONAI bundle" in (folder / "model_card.md").read_text()
    loaded = Registry(tmp_path).load("lung-nodule-phantom", threads=2)
    assert isinstance(loaded.predictor, BundlePredictor)
    assert loaded.identity.weights_sha256 == manifest["files"]["models/model.pt"]
    loaded.predictor.precision = "fp32"  # the weights, compared without bf16 rounding
    x = np.random.default_rng(0).random((1, 1, 24, 40, 56), dtype=np.float32)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    assert np.max(np.abs(loaded.predictor.predict(x) - session.run(None, {"image": x})[0])) < 1e-3


def test_export_refuses_bf16_for_onnx(tiny_run: tuple[Path, Path], tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    _, best = tiny_run
    with pytest.raises(ValueError, match="bf16 needs runtime monai-bundle"):
        export_onnx(best, tmp_path / "m", model_id="x", version="0.0.1", cpu_precision="bf16")
    assert not (tmp_path / "m").exists()
    with pytest.raises(SystemExit) as exited:  # the command line: exit code 2 and the sentence
        export_main(["--checkpoint", str(best), "--out", str(tmp_path / "m"), "--cpu-precision", "bf16"])
    assert exited.value.code == 2 and "bf16 needs runtime monai-bundle" in capsys.readouterr().err


def test_training_can_start_from_a_model_folder(tiny_run: tuple[Path, Path], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """``init_from`` a model folder: the network starts as its ONNX file and BatchNorm stays frozen, so with a
    vanishing learning rate the trained network still computes what the parent model computes."""
    _, best = tiny_run
    parent = export_onnx(best, tmp_path / "parent", model_id="lung-nodule-phantom", version="0.0.1")
    data = yaml.safe_load(TINY.read_text())
    data.update(init_from="parent", steps=3, lr=1e-12, model={"features": [16, 16, 16]})  # features: the parent's win
    child_cfg = tmp_path / "child.yaml"
    child_cfg.write_text(yaml.safe_dump(data))
    child = train(child_cfg, tmp_path / "child")
    assert "network: fine-tuned from its ONNX weights" in capsys.readouterr().out
    net, cfg, _ = load_trained(child)
    assert cfg.model.features == load_trained(best)[1].model.features
    x = np.random.default_rng(1).random((1, 1, 16, 24, 32), dtype=np.float32)
    session = ort.InferenceSession(str(parent), providers=["CPUExecutionProvider"])
    with torch.inference_mode():
        got = net(torch.from_numpy(x)).numpy()
    assert np.max(np.abs(got - session.run(None, {"image": x})[0])) < 1e-3
    # A second stage from that run's checkpoint keeps BatchNorm frozen when the config says so.
    data.update(init_from=str(child), freeze_batchnorm=True)
    child_cfg.write_text(yaml.safe_dump(data))
    grandchild, _, _ = load_trained(train(child_cfg, tmp_path / "grandchild"))
    with torch.inference_mode():
        again = grandchild(torch.from_numpy(x)).numpy()
    assert np.max(np.abs(again - got)) < 1e-5


def test_steps_override_extends_a_finished_run(tiny_run: tuple[Path, Path], tmp_path: Path) -> None:
    out, _ = tiny_run
    run = tmp_path / "run"
    shutil.copytree(out, run)
    done = torch.load(run / LAST, weights_only=False)["step"]
    train(TINY, run, resume=True, steps=done + 2)
    state = torch.load(run / LAST, weights_only=False)
    assert state["step"] == done + 2 and state["config"]["steps"] == done + 2


def test_starting_from_a_folder_without_onnx_says_so(tmp_path: Path) -> None:
    """Warm starts read a model folder's model.onnx; a TorchScript-only folder is refused in one sentence."""
    shipped = yaml.safe_load((REPO / "models" / "lung-nodule-phantom" / "0.1.0" / "manifest.yaml").read_text())
    folder = export_model_folder(NoduleNet((4, 8, 8)), tmp_path / "lung-nodule-phantom" / "0.1.0", "torchscript",
                                 shipped)
    with pytest.raises(ValueError, match="has no ONNX file"):
        starting_network(folder, load_config(TINY))
