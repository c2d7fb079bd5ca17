"""TorchScript implementation of the ``Predictor`` seam (``torch.jit.load``; no Python code is run)."""

from __future__ import annotations

from pathlib import Path

from inference.runners.torch_predictor import (
    CpuPrecision,
    GpuPrecision,
    TorchPredictor,
    default_device,
    load_torchscript,
)


class TorchScriptPredictor(TorchPredictor):
    """A TorchScript archive with one input ``(N, 1, D, H, W)`` and a same-shaped output."""

    def __init__(self, model_path: Path, *, threads: int = 1, device: str | None = None,
                 cpu_precision: CpuPrecision = "fp32", gpu_precision: GpuPrecision = "fp16") -> None:
        device = device or default_device()
        super().__init__(load_torchscript(model_path, device), source=str(model_path), device=device,
                         cpu_precision=cpu_precision, gpu_precision=gpu_precision, threads=threads)
        self.model_path = model_path
