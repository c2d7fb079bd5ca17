"""Runners: the model seam (``Predictor``), its ONNX Runtime implementation, sliding-window inference."""

from inference.runners.onnx_predictor import OnnxPredictor, RunnerError
from inference.runners.predictor import CallablePredictor, Predictor
from inference.runners.sliding_window import plan_windows, sliding_window_predict

__all__ = ["CallablePredictor", "OnnxPredictor", "Predictor", "RunnerError", "plan_windows", "sliding_window_predict"]
