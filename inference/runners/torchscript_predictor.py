"""TorchScript implementation of the ``Predictor`` seam (``torch.jit.load``; no Python code is run)."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from inference.runners.onnx_predictor import RunnerError
from inference.runners.torch_predictor import CpuPrecision, GpuPrecision, TorchPredictor, default_device


class TorchScriptPredictor(TorchPredictor):
    """A TorchScript archive with one input ``(N, 1, D, H, W)`` and a same-shaped output."""

    def __init__(self, model_path: Path, *, threads: int = 1, device: str | None = None,
                 cpu_precision: CpuPrecision = "fp32", gpu_precision: GpuPrecision = "fp16") -> None:
        device = device or default_device()
        try:
            with warnings.catch_warnings():  # TorchScript is deprecated upstream, still what users bring
                warnings.simplefilter("ignore", FutureWarning)
                module = torch.jit.load(str(model_path), map_location=device)
        except (RuntimeError, ValueError, OSError) as exc:
            raise RunnerError(f"cannot load TorchScript model {model_path}: {exc}") from exc
        super().__init__(module, source=str(model_path), device=device, cpu_precision=cpu_precision,
                         gpu_precision=gpu_precision, threads=threads)
        self.model_path = model_path
