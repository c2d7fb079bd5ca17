"""ONNX Runtime implementation of the ``BoxPredictor`` seam.

The model has one input, a float32 patch ``(1, 1, D, H, W)``, and returns boxes ``(n, 6)`` written in
the manifest's ``box_mode`` (along the input's array axes, in voxels) as its first output and their
scores ``(n,)`` (probabilities) as its second; further outputs (labels) are ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from inference.runners.box_predictor import Boxes, to_boxes
from inference.runners.onnx_predictor import RunnerError, open_session, run_session
from inference.volume import FloatArray


class OnnxBoxPredictor:
    """An ONNX box detector: ``(1, 1, D, H, W)`` -> (boxes in ``box_mode``, scores)."""

    def __init__(self, model_path: Path, *, box_mode: str, threads: int = 1,
                 providers: Sequence[str] | None = None) -> None:
        self._session = open_session(model_path, threads, providers, min_outputs=2)
        self._outputs = [o.name for o in self._session.get_outputs()[:2]]
        self.box_mode = box_mode
        self.model_path = model_path

    def predict_boxes(self, x: FloatArray) -> Boxes:
        if x.shape[:2] != (1, 1):
            raise RunnerError(f"a box detector takes one patch (1, 1, D, H, W), not {x.shape}")
        boxes, scores = run_session(self._session, self._outputs, x, self.model_path)
        return to_boxes(boxes, scores, self.box_mode, str(self.model_path))
