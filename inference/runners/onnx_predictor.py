"""ONNX Runtime implementation of the ``Predictor`` seam; the session helpers serve ``OnnxBoxPredictor`` too."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from inference.volume import FloatArray

PREFERRED_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")


class RunnerError(RuntimeError):
    """The model cannot be loaded or run; the message says why in one sentence."""


def _static_dim(dim: object) -> int | None:
    return dim if isinstance(dim, int) and dim > 0 else None


def open_session(model_path: Path, threads: int = 1, providers: Sequence[str] | None = None,
                 min_outputs: int = 1) -> ort.InferenceSession:
    """An ONNX Runtime session for a model with one float32 ``(N, 1, D, H, W)`` input.

    The CUDA execution provider is used when this onnxruntime build offers it, then the CPU one.
    ``threads`` bounds the intra-op thread pool; inter-op parallelism stays at one thread and
    idle threads do not spin, so several workers can share a machine.
    """
    if threads < 1:
        raise ValueError("threads must be at least 1")
    available = ort.get_available_providers()
    requested = list(providers or PREFERRED_PROVIDERS)
    wanted = [p for p in requested if p in available]
    if not wanted:
        raise RunnerError(f"none of the execution providers {requested} is available (have {available})")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(model_path), sess_options=options, providers=wanted)
    except Exception as exc:  # onnxruntime raises its own untyped exceptions
        raise RunnerError(f"cannot load ONNX model {model_path}: {exc}") from exc
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(outputs) < min_outputs:
        raise RunnerError(
            f"ONNX model {model_path} must have one input and {min_outputs} output(s) or more "
            f"(has {len(inputs)} and {len(outputs)})"
        )
    shape = list(inputs[0].shape)
    if len(shape) != 5:
        raise RunnerError(f"ONNX model {model_path} input must be 5-D (N, 1, D, H, W), not {shape}")
    if inputs[0].type != "tensor(float)":
        raise RunnerError(f"ONNX model {model_path} input must be float32, not {inputs[0].type}")
    return session


def run_session(session: ort.InferenceSession, outputs: list[str], x: FloatArray,
                model_path: Path) -> list[npt.NDArray[Any]]:
    """``outputs`` of ``session`` for the float32 batch ``x`` ``(N, 1, D, H, W)``."""
    if x.ndim != 5 or x.shape[1] != 1:
        raise RunnerError(f"model input must be (N, 1, D, H, W), not {x.shape}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    try:
        return [np.asarray(o) for o in session.run(outputs, {session.get_inputs()[0].name: x})]
    except Exception as exc:  # onnxruntime raises its own untyped exceptions
        raise RunnerError(f"ONNX model {model_path} failed on input {x.shape}: {exc}") from exc


class OnnxPredictor:
    """Runs an ONNX model with one input ``(N, 1, D, H, W)`` and one output of the same shape (``open_session``)."""

    def __init__(self, model_path: Path, threads: int = 1, providers: Sequence[str] | None = None) -> None:
        self._session = open_session(model_path, threads, providers)
        shape = list(self._session.get_inputs()[0].shape)
        self._output_name = self._session.get_outputs()[0].name
        self._max_batch = _static_dim(shape[0])
        spatial = [_static_dim(d) for d in shape[2:]]
        self._fixed_shape: tuple[int, int, int] | None = None
        if all(d is not None for d in spatial):
            self._fixed_shape = (int(spatial[0] or 0), int(spatial[1] or 0), int(spatial[2] or 0))
        self.model_path = model_path

    @property
    def providers(self) -> list[str]:
        """The execution providers the session actually uses, best first."""
        return list(self._session.get_providers())

    @property
    def fixed_shape(self) -> tuple[int, int, int] | None:
        return self._fixed_shape

    @property
    def max_batch(self) -> int | None:
        return self._max_batch

    def predict(self, x: FloatArray) -> FloatArray:
        (out,) = run_session(self._session, [self._output_name], x, self.model_path)
        if out.shape != x.shape:
            raise RunnerError(f"model output {out.shape} does not match its input {x.shape}")
        return out.astype(np.float32, copy=False)
