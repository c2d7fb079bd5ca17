"""Starting weights for training: a shipped model folder (its ONNX weights) or a training checkpoint.

The PyTorch checkpoint of a shipped model is not shipped; its ONNX file is. ONNX export folds each
convolution's BatchNorm into the convolution, so ``network_from_onnx`` rebuilds the network with those folded
weights and identity BatchNorm (mean 0, variance 1 - eps, scale 1, shift = the folded bias); the rebuilt
network reproduces the ONNX output (checked on every load). Training from such a start keeps BatchNorm in
eval mode (``freeze_batchnorm``), so the network starts exactly where the shipped model is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from inference.manifest import load_manifest
from inference.networks import NoduleNet, build_network
from training.config import ModelConfig, TrainConfig
from training.export import load_trained, parity

PARITY_TOLERANCE = 1e-4


def network_from_onnx(model_path: Path, *, check: bool = True) -> NoduleNet:
    """The ``NoduleNet`` whose eval-mode output is the ONNX model's (BatchNorm folded into convolutions).

    Raises ValueError when the ONNX graph is not a NoduleNet export or (with ``check``) the outputs differ by
    more than ``PARITY_TOLERANCE``.
    """
    graph = onnx.load(str(model_path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    weights = [inits.get(n.input[1]) for n in convs]
    if len(weights) < 7 or any(w is None or w.ndim != 5 for w in weights):
        raise ValueError(f"{model_path} is not an export of inference.networks.NoduleNet")
    features = (int(weights[0].shape[0]), int(weights[3].shape[0]), int(weights[6].shape[0]))  # type: ignore[union-attr]
    net = build_network(features)
    modules = dict(net.named_modules())
    conv_names = [name for name, m in net.named_modules() if isinstance(m, nn.Conv3d)]
    if len(conv_names) != len(convs):
        raise ValueError(f"{model_path} has {len(convs)} convolutions; NoduleNet{features} has {len(conv_names)}")
    state = net.state_dict()
    done: set[str] = set()
    for name, node, w in zip(conv_names, convs, weights, strict=True):
        assert w is not None
        if tuple(state[f"{name}.weight"].shape) != w.shape:
            raise ValueError(f"{model_path}: convolution {name} has shape {w.shape}, expected "
                             f"{tuple(state[name + '.weight'].shape)}")
        state[f"{name}.weight"] = torch.from_numpy(w.copy())
        done.add(f"{name}.weight")
        parent, _, index = name.rpartition(".")
        bn_name = f"{parent}.{int(index) + 1}"
        bn = modules.get(bn_name)
        if not isinstance(bn, nn.BatchNorm3d):
            raise ValueError(f"{model_path}: no BatchNorm after convolution {name}")
        bias = inits[node.input[2]] if len(node.input) > 2 else np.zeros(w.shape[0], dtype=np.float32)
        state[f"{bn_name}.weight"] = torch.ones(w.shape[0])
        state[f"{bn_name}.bias"] = torch.from_numpy(bias.astype(np.float32).copy())
        state[f"{bn_name}.running_mean"] = torch.zeros(w.shape[0])
        state[f"{bn_name}.running_var"] = torch.full((w.shape[0],), 1.0 - bn.eps)
        done |= {f"{bn_name}.{k}" for k in ("weight", "bias", "running_mean", "running_var")}
    for key in state:  # transposed convolutions and their BatchNorm keep their parameter names
        if key not in done and key in inits:
            state[key] = torch.from_numpy(inits[key].copy())
            done.add(key)
    missing = [k for k in state if k not in done and not k.endswith("num_batches_tracked")]
    if missing:
        raise ValueError(f"{model_path}: no weights for {', '.join(missing[:5])}")
    net.load_state_dict(state)
    net.eval()
    if check:
        diff = onnx_parity(net, model_path)
        if diff > PARITY_TOLERANCE:
            raise ValueError(f"{model_path}: the rebuilt network differs from the ONNX model by {diff:.2e}")
    return net


def onnx_parity(net: NoduleNet, model_path: Path, shape: tuple[int, int, int] = (32, 40, 48)) -> float:
    """Max absolute difference between the network (eval mode) and ONNX Runtime on a fixed random input."""
    return parity(net, model_path, shape)


ONNX_FILE = "model.onnx"


def starting_network(init: Path | None, cfg: TrainConfig) -> tuple[NoduleNet, TrainConfig, dict[str, Any] | None,
                                                                     str]:
    """The network to start from, the config adjusted to it (features, spacing, window), the parent, a note."""
    if init is None:
        return build_network(cfg.model.features), cfg, None, "trained from scratch"
    if init.is_dir():
        manifest = load_manifest(init / "manifest.yaml")
        # A shipped bundle carries its weights as model.onnx too: the ONNX file is the one format read here.
        onnx_file = ONNX_FILE if ONNX_FILE in manifest.files else manifest.model_file
        if not onnx_file.endswith(".onnx"):
            raise ValueError(f"init_from {init} has no ONNX file (a NoduleNet model.onnx) to start from")
        net = network_from_onnx(init / onnx_file)
        data = cfg.data.model_copy(update={"spacing_mm": tuple(manifest.input.spacing_mm),
                                           "window_hu": tuple(manifest.input.window_hu)})
        cfg = cfg.model_copy(update={"model": ModelConfig(features=net.features), "data": data,
                                     "threshold": manifest.output.threshold})
        parent = {"id": manifest.id, "version": manifest.version, "weights_sha256": manifest.weights_sha256,
                  "device_uid": manifest.device_uid}
        return net, cfg, parent, "fine-tuned from its ONNX weights (BatchNorm folded, kept frozen)"
    net, ckcfg, info = load_trained(init)
    data = cfg.data.model_copy(update={"spacing_mm": ckcfg.data.spacing_mm, "window_hu": ckcfg.data.window_hu})
    cfg = cfg.model_copy(update={"model": ckcfg.model, "data": data})
    return net, cfg, {"checkpoint": str(init), "step": info.get("step")}, "fine-tuned from a training checkpoint"


def freeze_batchnorm(net: nn.Module) -> None:
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
