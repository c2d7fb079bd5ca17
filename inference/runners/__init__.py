"""Runners: the model seams and their implementations.

Per-voxel models (``Predictor``): ONNX Runtime, TorchScript, MONAI bundle. Box detectors
(``BoxPredictor``): ONNX Runtime, TorchScript, MONAI detection bundle. ``bundle_predictor`` and
``detection_bundle`` are imported where used (``inference.registry``): they pull in MONAI.
"""

from inference.runners.axes import in_xyz
from inference.runners.box_predictor import Boxes, BoxPredictor, CallableBoxPredictor
from inference.runners.onnx_box_predictor import OnnxBoxPredictor
from inference.runners.onnx_predictor import OnnxPredictor, RunnerError
from inference.runners.predictor import CallablePredictor, Predictor
from inference.runners.sliding_window import plan_windows, sliding_window_boxes, sliding_window_predict
from inference.runners.torch_box_predictor import TorchBoxPredictor
from inference.runners.torch_predictor import TorchPredictor, default_device, load_torchscript
from inference.runners.torchscript_predictor import TorchScriptPredictor

# What a manifest's runtime and output kind give: a per-voxel model or a box detector.
ModelRunner = Predictor | BoxPredictor

__all__ = [
    "BoxPredictor",
    "Boxes",
    "CallableBoxPredictor",
    "CallablePredictor",
    "ModelRunner",
    "OnnxBoxPredictor",
    "OnnxPredictor",
    "Predictor",
    "RunnerError",
    "TorchBoxPredictor",
    "TorchPredictor",
    "TorchScriptPredictor",
    "default_device",
    "in_xyz",
    "load_torchscript",
    "plan_windows",
    "sliding_window_boxes",
    "sliding_window_predict",
]
