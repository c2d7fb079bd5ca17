"""A tiny MONAI detection bundle (RetinaNet) in the model zoo's layout, with a known output (tests only).

The network is MONAI's ``RetinaNet`` with a one-layer feature extractor (``Conv3d`` 2x2x2, stride 2,
every channel the mean of its 2x2x2 cell) and heads whose convolutions pass each channel through
(identity kernels; GroupNorm and ReLU keep the result a non-decreasing function of the cell's mean
intensity). ``calibrate`` then sets the classification layer so that, on a given input, only the
first anchor of the brightest cell scores above 0.5 (``PEAK_SCORE``). Box regression is zero, so the
box is that anchor: centred at ``2 n + 1`` along each axis for cell n (MONAI's anchor centres), with
the anchor's shape in voxels. No weights are downloaded or trained.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
import yaml
from factory_model import manifest_dict, sha256_of
from monai.apps.detection.networks.retinanet_network import RetinaNet

from inference.volume import FloatArray

CHANNELS = 8
ANCHOR_SHAPES = [[6, 6, 4], [10, 10, 6]]  # (x, y, z) voxels; only the first ever fires
PEAK_LOGIT = 3.0
PEAK_SCORE = 1.0 / (1.0 + math.exp(-PEAK_LOGIT))
# The MONAI model zoo's lung_nodule_ct_detection input: RAS, 0.703125 x 0.703125 x 1.25 mm, -1024..300 HU.
SPACING_MM = (0.703125, 0.703125, 1.25)
WINDOW_HU = (-1024.0, 300.0)
RETINANET = "monai.apps.detection.networks.retinanet_network.RetinaNet"
ANCHORS = "monai.apps.detection.utils.anchor_utils.AnchorGeneratorWithAnchorShape"

_ANCHOR_ITEM = {"_target_": ANCHORS, "feature_map_scales": [1], "base_anchor_shapes": ANCHOR_SHAPES}
_NETWORK_ARGS = {"spatial_dims": "@spatial_dims", "num_classes": "@num_classes", "num_anchors": len(ANCHOR_SHAPES),
                 "feature_extractor": "@feature_extractor", "size_divisible": [2, 2, 2], "use_list_output": False}
# Items of the zoo's config that tamsoat never runs (it builds its own RetinaNetDetector).
_NOT_RUN = {
    "detector": {"_target_": "RetinaNetDetector", "network": "@network_def", "anchor_generator": "@anchor_generator"},
    "detector_ops": ["$@detector.set_box_selector_parameters(score_thresh=0.02, nms_thresh=0.22)"],
    "run": ["$open('MARKER', 'w').close()"],
}


def declarative_config() -> dict[str, Any]:
    """``configs/inference.json`` with only plain data: runs without ``trusted: true``."""
    return {
        "spatial_dims": 3, "num_classes": 1,
        "feature_extractor": {"_target_": "torch.nn.Conv3d", "in_channels": 1, "out_channels": CHANNELS,
                              "kernel_size": 2, "stride": 2},
        "network_def": {"_target_": RETINANET, **_NETWORK_ARGS},
        "anchor_generator": _ANCHOR_ITEM,
        **_NOT_RUN,
    }


def zoo_style_config() -> dict[str, Any]:
    """The same network written as the model zoo writes it: a ``$`` expression and a short target name."""
    return {
        **declarative_config(),
        "feature_extractor": f"$torch.nn.Conv3d(1, {CHANNELS}, kernel_size=2, stride=2)",
        "network_def": {"_target_": "RetinaNet", **_NETWORK_ARGS},
    }


def tiny_retinanet() -> RetinaNet:
    """The network of ``declarative_config`` with the pass-through weights (classification not yet calibrated)."""
    features = torch.nn.Conv3d(1, CHANNELS, kernel_size=2, stride=2)
    net = RetinaNet(spatial_dims=3, num_classes=1, num_anchors=len(ANCHOR_SHAPES), feature_extractor=features,
                    size_divisible=[2, 2, 2])
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        features.weight.fill_(1.0 / 8.0)
        for head in (net.classification_head, net.regression_head):
            for layer in head.conv:
                if isinstance(layer, torch.nn.Conv3d):
                    for c in range(CHANNELS):
                        layer.weight[c, c, 1, 1, 1] = 1.0
                elif isinstance(layer, torch.nn.GroupNorm):
                    layer.weight.fill_(1.0)
        net.classification_head.cls_logits.weight[0, :, 1, 1, 1] = 1.0
    return net.eval()


def calibrate(net: RetinaNet, x_xyz: FloatArray) -> None:
    """Scale the first anchor's logit so that on ``x_xyz`` ``(1, 1, x, y, z)`` its best cell scores
    ``PEAK_SCORE`` and every other cell below 0.5; the second anchor never fires."""
    with torch.inference_mode():
        logits = net(torch.from_numpy(x_xyz))["classification"][0][0, 0].flatten()
    top, second = torch.topk(logits, 2).values.tolist()
    assert top > second, "the input needs one brightest cell"
    gain = 2.0 * PEAK_LOGIT / (top - second)
    layer = net.classification_head.cls_logits
    with torch.no_grad():
        layer.weight[0] *= gain
        assert layer.bias is not None
        layer.bias[0] = -gain * (top + second) / 2.0
        layer.bias[1] = -50.0


def write_bundle(folder: Path, net: torch.nn.Module, config: dict[str, Any]) -> dict[str, str]:
    """The bundle files under ``folder``; returns ``files`` for the manifest (name -> sha256)."""
    (folder / "configs").mkdir(parents=True, exist_ok=True)
    (folder / "models").mkdir(exist_ok=True)
    (folder / "configs" / "metadata.json").write_text(json.dumps({"version": "0.1.0", "task": "detection"}))
    (folder / "configs" / "inference.json").write_text(json.dumps(config, indent=2))
    torch.save({"model": net.state_dict()}, folder / "models" / "model.pt")
    names = ("configs/inference.json", "configs/metadata.json", "models/model.pt")
    return {name: sha256_of(folder / name) for name in names}


def box_manifest(model_id: str, files: dict[str, str], *, patch_size: tuple[int, int, int], **overrides: Any
                 ) -> dict[str, Any]:
    """A manifest for a box detector on the zoo's input; ``overrides`` replace top-level fields."""
    data = manifest_dict(id=model_id, version="1.0.0", runtime="monai-bundle", files=files)
    data["input"] = {"spacing_mm": list(SPACING_MM), "window_hu": list(WINDOW_HU), "patch_size": list(patch_size),
                     "axes": "ras"}
    data["output"] = {"kind": "boxes", "threshold": 0.5, "nms_iou": 0.22,
                      "label": {"scheme": "SCT", "value": "27925004", "meaning": "Nodule"}}
    data.update(overrides)
    return data


def write_manifest(folder: Path, data: dict[str, Any]) -> Path:
    path = folder / "manifest.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path
