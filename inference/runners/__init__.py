"""Runners: the model seam (``Predictor``) and its ONNX Runtime, TorchScript and MONAI-bundle implementations.

``inference.runners.bundle_predictor`` (MONAI bundles) is imported where used: it pulls in ``monai.bundle``.
"""

from inference.runners.onnx_predictor import OnnxPredictor, RunnerError
from inference.runners.predictor import CallablePredictor, Predictor
from inference.runners.sliding_window import plan_windows, sliding_window_predict
from inference.runners.torch_predictor import TorchPredictor, default_device
from inference.runners.torchscript_predictor import TorchScriptPredictor

__all__ = [
    "CallablePredictor",
    "OnnxPredictor",
    "Predictor",
    "RunnerError",
    "TorchPredictor",
    "TorchScriptPredictor",
    "default_device",
    "plan_windows",
    "sliding_window_predict",
]
