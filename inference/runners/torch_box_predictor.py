"""PyTorch implementation of the ``BoxPredictor`` seam: a module that returns boxes and scores.

The module takes one float32 patch ``(1, 1, D, H, W)`` and returns, for that patch, any of

* MONAI's detector output: a list with one dict holding ``boxes`` and ``labels_scores``
  (``RetinaNetDetector``; a TorchScript export of it returns the same);
* a dict with ``boxes`` and ``scores`` (or ``labels_scores``);
* a tuple ``(boxes, scores, ...)``.

``boxes`` is ``(n, 6)`` in the manifest's ``box_mode`` (MONAI's mode names, along the input's array
axes, in voxels) and is converted to corner form (``box_predictor.to_boxes``); ``scores`` ``(n,)``
are probabilities.
"""

from __future__ import annotations

import torch

from inference.runners.box_predictor import Boxes, to_boxes
from inference.runners.onnx_predictor import RunnerError
from inference.runners.torch_predictor import CpuPrecision, GpuPrecision, TorchRunner
from inference.volume import FloatArray

_SCORE_KEYS = ("scores", "labels_scores")


def _boxes_and_scores(out: object, source: str) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(out, (list, tuple)) and len(out) == 1 and isinstance(out[0], dict):
        out = out[0]
    if isinstance(out, dict):
        score_key = next((k for k in _SCORE_KEYS if k in out), None)
        if "boxes" not in out or score_key is None:
            raise RunnerError(f"model {source} returned a dict with {sorted(out)}, not boxes and scores")
        boxes, scores = out["boxes"], out[score_key]
    elif isinstance(out, (list, tuple)) and len(out) >= 2:
        boxes, scores = out[0], out[1]
    else:
        raise RunnerError(f"model {source} returned {type(out).__name__}, not boxes and scores")
    if not (isinstance(boxes, torch.Tensor) and isinstance(scores, torch.Tensor)):
        raise RunnerError(f"model {source} returned boxes and scores that are not tensors")
    return boxes, scores


class TorchBoxPredictor(TorchRunner):
    """A torch module mapping one patch to scored boxes written in ``box_mode``."""

    def __init__(self, module: torch.nn.Module, *, box_mode: str, source: str, device: str | None = None,
                 cpu_precision: CpuPrecision = "fp32", gpu_precision: GpuPrecision = "fp16",
                 threads: int = 1) -> None:
        super().__init__(module, source=source, device=device, cpu_precision=cpu_precision,
                         gpu_precision=gpu_precision, threads=threads)
        self.box_mode = box_mode

    def predict_boxes(self, x: FloatArray) -> Boxes:
        if x.shape[:2] != (1, 1):
            raise RunnerError(f"a box detector takes one patch (1, 1, D, H, W), not {x.shape}")
        boxes, scores = _boxes_and_scores(self.run(x), self.source)
        return to_boxes(boxes.detach().to("cpu", torch.float64).numpy(),
                        scores.detach().to("cpu", torch.float64).numpy(), self.box_mode, self.source)
