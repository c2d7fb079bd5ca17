"""Research-side training pieces: ONNX-start weights, FROC arithmetic, registration of a model folder."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from inference.networks import NoduleNet
from inference.registry import Registry
from tamsoat.cli_training import shipped_model
from training.export import _export
from training.finetune import load_research_config
from training.froc import FP_RATES, CaseScores, Truth, froc
from training.register import RegistrationError, register_model
from training.warm_start import network_from_onnx, onnx_parity

REPO = Path(__file__).resolve().parents[2]
SHIPPED = shipped_model()  # the newest shipped version: research starts from it


def test_a_random_network_survives_onnx_export_and_import(tmp_path: Path) -> None:
    torch.manual_seed(3)
    net = NoduleNet((4, 8, 8))
    for m in net.modules():  # BatchNorm with real statistics, as after training
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    net.eval()
    path = tmp_path / "m.onnx"
    _export(net, path)
    rebuilt = network_from_onnx(path)
    assert rebuilt.features == (4, 8, 8)
    assert onnx_parity(rebuilt, path) < 1e-5
    x = torch.rand(1, 1, 24, 32, 16)
    with torch.inference_mode():
        assert float((rebuilt(x) - net(x)).abs().max()) < 1e-4


def test_the_shipped_model_rebuilds_from_its_onnx_file() -> None:
    net = network_from_onnx(SHIPPED / "model.onnx")  # raises when the parity check fails
    assert net.features == (16, 32, 64)


def test_a_graph_that_is_not_nodulenet_is_refused(tmp_path: Path) -> None:
    from tests.inference.factory_model import conv_model

    with pytest.raises(ValueError, match="not an export of"):
        network_from_onnx(conv_model(tmp_path / "c.onnx"))


def test_research_configs_load() -> None:
    for name in ("research_tiny.yaml", "research_finetune.yaml"):
        rc = load_research_config(REPO / "training" / "configs" / name)
        assert rc.resolve(rc.research.init_from) == SHIPPED.resolve()


def test_froc_known_answer() -> None:
    a = Truth((0.0, 0.0, 0.0), 10.0, "solid")
    b = Truth((50.0, 0.0, 0.0), 4.0, "ground_glass")
    c = Truth((100.0, 0.0, 0.0), 20.0, "solid")
    scans = [
        CaseScores("s1", (a, b), (Truth((200.0, 0.0, 0.0), 6.0),),
                   centers_mm=[(1.0, 0.0, 0.0), (51.0, 0.0, 0.0), (200.0, 0.0, 0.0), (300.0, 0.0, 0.0)],
                   scores=[0.9, 0.3, 0.8, 0.2]),
        CaseScores("s2", (c,), (), centers_mm=[(400.0, 0.0, 0.0)], scores=[0.6]),
    ]
    out = froc(scans, operating_threshold=0.5)
    # Thresholds 0.9: 1 hit, 0 FP; 0.8: 1 FP (0.5/scan); 0.6: 2 FP (1/scan); 0.3: b hit (2/3); 0.2: 3 FP (1.5)
    assert out["nodules"] == 3 and out["scans"] == 2
    assert out["sens@0.125"] == pytest.approx(1 / 3, abs=1e-4)
    assert out["sens@1"] == pytest.approx(2 / 3, abs=1e-4) and out["sens@2"] == pytest.approx(2 / 3, abs=1e-4)
    assert out["cpm"] == pytest.approx(np.mean([1 / 3] * 3 + [2 / 3] * 4), abs=1e-3)
    assert out["op_sensitivity"] == pytest.approx(1 / 3, abs=1e-4) and out["op_fp_per_scan"] == 1.0
    assert out["hard_negatives"] == 1 and out["hard_negatives_redetected"] == 1.0
    assert out["by_type"]["solid"]["nodules"] == 2 and out["by_type"]["ground_glass"]["op_sensitivity"] == 0.0
    assert set(out["by_size_band"]) == {"<6 mm", "8-15 mm", ">=15 mm"}
    assert out["by_size_band"][">=15 mm"]["cpm"] == 0.0
    assert len(FP_RATES) == 7 and math.isclose(out["curve"]["sensitivity"][-1], 2 / 3, abs_tol=1e-4)


def test_register_model_copies_hashes_and_refuses_repeats(tmp_path: Path) -> None:
    from tests.inference.factory_model import threshold_model, write_model_folder

    src = write_model_folder(tmp_path / "src", threshold_model, version="0.0.1")
    (src / "lineage.json").write_text('{"parent": {"id": "lung-nodule-phantom", "version": "0.1.0"}, "steps": 3}')
    models = tmp_path / "models"
    reg = register_model(src, models, version="1.0.0-rc.1", model_id="candidate-model")
    assert reg.directory == models / "candidate-model" / "1.0.0-rc.1"
    manifest = yaml.safe_load((reg.directory / "manifest.yaml").read_text())
    assert manifest["id"] == "candidate-model" and set(manifest["files"]) == {"model.onnx", "lineage.json",
                                                                            "model_card.md"}
    assert "Parent: `lung-nodule-phantom` `0.1.0`" in (reg.directory / "model_card.md").read_text()
    assert Registry(models).verify("candidate-model", "1.0.0-rc.1").manifest.device_uid == manifest["device_uid"]
    with pytest.raises(RegistrationError, match="already registered"):
        register_model(src, models, version="1.0.0-rc.1", model_id="candidate-model")
    with pytest.raises(RegistrationError, match=r"not a semantic version"):
        register_model(src, models, version="v2", model_id="candidate-model")
    (src / "model.onnx").unlink()
    with pytest.raises(RegistrationError, match=r"lacks model\.onnx"):
        register_model(src, models, version="2.0.0", model_id="candidate-model")
    assert sorted(p.name for p in models.iterdir()) == ["candidate-model"]  # nothing half-made is left
    assert sorted(p.name for p in (models / "candidate-model").iterdir()) == ["1.0.0-rc.1"]
