"""The PyTorch side of the model seams: a ``torch.nn.Module`` on CUDA when present, else CPU.

Shared by the TorchScript and MONAI-bundle runners, per-voxel (``TorchPredictor``) and box
(``inference.runners.torch_box_predictor``) alike. On a GPU the model runs under fp16 autocast by
default; on the CPU in fp32, or under bf16 autocast when the manifest asks for it (``precision``) and
the CPU computes bf16 natively (AVX512-BF16 or AMX): elsewhere bf16 is emulated and slower than
fp32, so the runner stays in fp32 and logs why. The output always comes back as float32 numpy.
"""

from __future__ import annotations

import logging
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from inference.runners.onnx_predictor import RunnerError
from inference.volume import FloatArray

CpuPrecision = Literal["fp32", "bf16"]
GpuPrecision = Literal["fp32", "fp16"]
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
log = logging.getLogger(__name__)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX tiles), where bf16 autocast pays."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def default_device() -> str:
    """``cuda`` when PyTorch sees a CUDA GPU, else ``cpu``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


class TorchRunner:
    """A module on a device, run under the manifest's precision: what the PyTorch runners share.

    ``threads`` sets PyTorch's intra-op thread count on the CPU; PyTorch has one pool per process,
    so the last runner built decides it (the service builds its runners with the same setting).
    """

    def __init__(self, module: torch.nn.Module, *, source: str, device: str | None = None,
                 cpu_precision: CpuPrecision = "fp32", gpu_precision: GpuPrecision = "fp16",
                 threads: int = 1) -> None:
        if threads < 1:
            raise ValueError("threads must be at least 1")
        self.device = torch.device(device or default_device())
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RunnerError(f"model {source} asks for {self.device} but PyTorch sees no CUDA GPU")
        if self.device.type == "cpu":
            torch.set_num_threads(threads)
        self.precision: str = gpu_precision if self.device.type == "cuda" else cpu_precision
        if self.precision == "bf16" and not cpu_has_native_bf16():
            log.warning("event=model.precision_fallback model=%s asked=bf16 running=fp32 "
                        "reason=cpu_without_native_bf16", source)
            self.precision = "fp32"
        self.source = source
        self._module = module.to(self.device).eval()

    @property
    def fixed_shape(self) -> tuple[int, int, int] | None:
        return None

    @property
    def max_batch(self) -> int | None:
        return None

    def _autocast(self) -> torch.autocast | nullcontext[None]:
        dtype = _DTYPES.get(self.precision)
        if dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def run(self, x: FloatArray) -> object:
        """The module's raw output for a float32 ``(N, 1, D, H, W)`` batch."""
        if x.ndim != 5 or x.shape[1] != 1:
            raise RunnerError(f"model input must be (N, 1, D, H, W), not {x.shape}")
        tensor = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device)
        try:
            with torch.inference_mode(), self._autocast():
                return self._module(tensor)
        except RuntimeError as exc:
            raise RunnerError(f"model {self.source} failed on input {tuple(x.shape)}: {exc}") from exc


class TorchPredictor(TorchRunner):
    """Runs a module taking ``(N, 1, D, H, W)`` float32 and returning a same-shaped output."""

    def predict(self, x: FloatArray) -> FloatArray:
        out = self.run(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        if not isinstance(out, torch.Tensor):
            raise RunnerError(f"model {self.source} returned {type(out).__name__}, not a tensor")
        if tuple(out.shape) != tuple(x.shape):
            raise RunnerError(f"model output {tuple(out.shape)} does not match its input {tuple(x.shape)}")
        result: FloatArray = out.detach().to("cpu", torch.float32).numpy()
        return result


def load_torchscript(model_path: Path, device: str) -> torch.nn.Module:
    """``torch.jit.load`` onto ``device`` (no Python code is run)."""
    try:
        with warnings.catch_warnings():  # TorchScript is deprecated upstream, still what users bring
            warnings.simplefilter("ignore", FutureWarning)
            module: torch.nn.Module = torch.jit.load(str(model_path), map_location=device)
    except (RuntimeError, ValueError, OSError) as exc:
        raise RunnerError(f"cannot load TorchScript model {model_path}: {exc}") from exc
    return module
