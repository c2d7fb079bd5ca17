"""MONAI's (x, y, z) array order at the model seam, for models that expect it (``input.axes: ras``).

tamsoat's arrays are ``[k, j, i]``; MONAI's images are ``(x, y, z)`` = ``(i, j, k)``. The pipeline
turns the volume to RAS first (``inference.preprocess.to_ras``); these adapters transpose each patch
on the way in, and the per-voxel output or the boxes on the way out, so that the sliding window and
the post-processing only ever see ``[k, j, i]``.
"""

from __future__ import annotations

import numpy as np

from inference.runners.box_predictor import Boxes, BoxPredictor
from inference.runners.predictor import Predictor
from inference.volume import FloatArray


def _swap(x: FloatArray) -> FloatArray:
    """``(N, C, D, H, W)`` <-> ``(N, C, W, H, D)``."""
    return np.ascontiguousarray(np.swapaxes(x, 2, 4))


class XyzPredictor:
    """A per-voxel ``Predictor`` whose model takes and returns ``(N, 1, x, y, z)``."""

    def __init__(self, inner: Predictor) -> None:
        self.inner = inner

    @property
    def fixed_shape(self) -> tuple[int, int, int] | None:
        shape = self.inner.fixed_shape
        return None if shape is None else (shape[2], shape[1], shape[0])

    @property
    def max_batch(self) -> int | None:
        return self.inner.max_batch

    def predict(self, x: FloatArray) -> FloatArray:
        return _swap(self.inner.predict(_swap(x)))


class XyzBoxPredictor:
    """A ``BoxPredictor`` whose model takes ``(1, 1, x, y, z)`` and writes boxes along x, y, z."""

    def __init__(self, inner: BoxPredictor) -> None:
        self.inner = inner

    def predict_boxes(self, x: FloatArray) -> Boxes:
        return self.inner.predict_boxes(_swap(x)).reversed_axes()


def in_xyz(runner: Predictor | BoxPredictor) -> Predictor | BoxPredictor:
    """``runner`` behind the adapter that gives it (x, y, z) patches."""
    if isinstance(runner, BoxPredictor):
        return XyzBoxPredictor(runner)
    return XyzPredictor(runner)
