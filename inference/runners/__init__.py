"""Runners: the model seams and their implementations.

Per-voxel models (``Predictor``): ONNX Runtime, TorchScript, MONAI bundle. Box detectors
(``BoxPredictor``): ONNX Runtime, TorchScript, MONAI detection bundle. The modules ``bundle_predictor``,
``detection_bundle``, ``torch_box_predictor`` and ``onnx_box_predictor`` are imported where used
(``inference.registry``): they pull in MONAI.
"""

from inference.runners.axes import in_xyz
from inference.runners.box_predictor import Boxes, BoxPredictor, CallableBoxPredictor
from inference.runners.onnx_predictor import OnnxPredictor, RunnerError
from inference.runners.predictor import CallablePredictor, Predictor
from inference.runners.sliding_window import plan_windows, sliding_window_boxes, sliding_window_predict
from inference.runners.torch_predictor import TorchPredictor, default_device
from inference.runners.torchscript_predictor import TorchScriptPredictor

# What a manifest's runtime and output kind give: a per-voxel model or a box detector.
ModelRunner = Predictor | BoxPredictor

__all__ = [
    "BoxPredictor",
    "Boxes",
    "CallableBoxPredictor",
    "CallablePredictor",
    "ModelRunner",
    "OnnxPredictor",
    "Predictor",
    "RunnerError",
    "TorchPredictor",
    "TorchScriptPredictor",
    "default_device",
    "in_xyz",
    "plan_windows",
    "sliding_window_boxes",
    "sliding_window_predict",
]
