"""Tiny ONNX models and their model folders, built in tests (no downloads, no training)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import yaml
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def _io(name: str, shape: Sequence[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def dynamic_shape() -> list[int | str]:
    return ["n", 1, "d", "h", "w"]


def threshold_model(path: Path, level: float = 0.5, gain: float = 20.0,
                    shape: Sequence[int | str] | None = None) -> Path:
    """logits = gain * (x - level): positive where the normalized intensity is above ``level``."""
    shape = list(shape or dynamic_shape())
    nodes = [
        helper.make_node("Sub", ["image", "level"], ["centred"]),
        helper.make_node("Mul", ["centred", "gain"], ["logits"]),
    ]
    inits = [
        numpy_helper.from_array(np.array(level, dtype=np.float32), "level"),
        numpy_helper.from_array(np.array(gain, dtype=np.float32), "gain"),
    ]
    graph = helper.make_graph(nodes, "threshold", [_io("image", shape)], [_io("logits", shape)], inits)
    return _save(graph, path)


def conv_model(path: Path, kernel: int = 3, seed: int = 0) -> Path:
    """A small random conv net: Conv(1->4, k) -> Relu -> Conv(4->1, 1). ``kernel`` 1 makes it pointwise."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.5, (4, 1, kernel, kernel, kernel)).astype(np.float32)
    b1 = rng.normal(0, 0.1, (4,)).astype(np.float32)
    w2 = rng.normal(0, 0.5, (1, 4, 1, 1, 1)).astype(np.float32)
    b2 = np.zeros((1,), dtype=np.float32)
    pad = kernel // 2
    nodes = [
        helper.make_node("Conv", ["image", "w1", "b1"], ["h1"], pads=[pad] * 6),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("Conv", ["h2", "w2", "b2"], ["logits"]),
    ]
    inits = [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))]
    shape = dynamic_shape()
    graph = helper.make_graph(nodes, "conv", [_io("image", shape)], [_io("logits", shape)], inits)
    return _save(graph, path)


def constant_box_model(path: Path, box: Sequence[float]) -> Path:
    """A box detector that reports ``box`` (6 numbers, in the manifest's box mode) in every patch, scored by
    the patch's highest normalized intensity: outputs ``boxes`` (1, 6) and ``scores`` (1,)."""
    nodes = [
        helper.make_node("Constant", [], ["boxes"], value=numpy_helper.from_array(
            np.array([box], dtype=np.float32), "box")),
        helper.make_node("ReduceMax", ["image"], ["peak"], keepdims=0),
        helper.make_node("Reshape", ["peak", "one"], ["scores"]),
    ]
    inits = [numpy_helper.from_array(np.array([1], dtype=np.int64), "one")]
    graph = helper.make_graph(nodes, "constant_box", [_io("image", [1, 1, "d", "h", "w"])],
                              [_io("boxes", [1, 6]), _io("scores", [1])], inits)
    return _save(graph, path)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def manifest_dict(**overrides: Any) -> dict[str, Any]:
    """A valid manifest, as the phantom model's, with ``overrides`` merged at the top level."""
    data: dict[str, Any] = {
        "id": "lung-nodule-phantom",
        "version": "0.1.0",
        "name": "tamsoat lung nodule detector (phantom-trained)",
        "manufacturer": "tamsoat",
        "device_uid": "2.25.123456789",
        "task": "lung-nodule-detection",
        "intended_use": "Demonstrates the pipeline on synthetic chest-CT phantoms. Not for clinical use.",
        "runtime": "onnx",
        "input": {
            "spacing_mm": [1.25, 1.25, 1.25],
            "window_hu": [-1000, 400],
            "patch_size": [96, 96, 96],
            "divisible_by": 8,
        },
        "output": {
            "kind": "logits",
            "threshold": 0.5,
            "min_diameter_mm": 3.0,
            "label": {"scheme": "SCT", "value": "27925004", "meaning": "Nodule"},
        },
        "files": {"model.onnx": "0" * 64},
    }
    data.update(overrides)
    return data


def write_model_folder(
    models_dir: Path,
    build: Any = threshold_model,
    model_id: str = "lung-nodule-phantom",
    version: str = "0.1.0",
    **overrides: Any,
) -> Path:
    """models/<id>/<version>/ with model.onnx built by ``build(path)`` and a matching manifest."""
    folder = models_dir / model_id / version
    onnx_path = build(folder / "model.onnx")
    data = manifest_dict(id=model_id, version=version, files={"model.onnx": sha256_of(onnx_path)})
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    (folder / "manifest.yaml").write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return folder
