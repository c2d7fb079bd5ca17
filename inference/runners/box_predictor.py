"""The box-detector seam: a model that turns one input patch into scored boxes.

Boxes are in corner form ``(min0, min1, min2, max0, max1, max2)`` along the input array's axes, in
voxels, as MONAI's detection code writes them (its ``StandardMode``, "xyzxyz"): a box coordinate c
is the voxel index c, so ``Volume.index_to_patient`` places it, as MONAI's
``AffineBoxToWorldCoordinated`` does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from inference.runners.onnx_predictor import RunnerError
from inference.volume import FloatArray

BoxArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Boxes:
    """``corners`` ``(n, 6)`` in corner form along the array's axes (voxels), ``scores`` ``(n,)`` in [0, 1]."""

    corners: BoxArray
    scores: BoxArray

    def __post_init__(self) -> None:
        if self.corners.ndim != 2 or self.corners.shape[1] != 6 or self.scores.shape != (self.corners.shape[0],):
            raise ValueError(f"boxes must be (n, 6) with (n,) scores, not {self.corners.shape} and {self.scores.shape}")

    @staticmethod
    def empty() -> Boxes:
        return Boxes(np.zeros((0, 6)), np.zeros(0))

    @staticmethod
    def concatenate(parts: list[Boxes]) -> Boxes:
        if not parts:
            return Boxes.empty()
        return Boxes(np.concatenate([p.corners for p in parts]), np.concatenate([p.scores for p in parts]))

    def shifted(self, offset: tuple[int, int, int]) -> Boxes:
        """The same boxes in a grid whose origin is ``offset`` voxels before this one's."""
        return Boxes(self.corners + np.array(offset * 2, dtype=np.float64), self.scores)

    def reversed_axes(self) -> Boxes:
        """The same boxes with the axis order reversed ((x, y, z) <-> (k, j, i))."""
        return Boxes(self.corners[:, [2, 1, 0, 5, 4, 3]], self.scores)


def to_boxes(boxes: npt.ArrayLike, scores: npt.ArrayLike, box_mode: str, source: str) -> Boxes:
    """A model's ``(n, 6)`` boxes written in ``box_mode`` (MONAI's names) and ``(n,)`` scores as ``Boxes``."""
    from monai.data.box_utils import convert_box_to_standard_mode  # MONAI: imported when a box model runs

    b, s = np.asarray(boxes, dtype=np.float64), np.asarray(scores, dtype=np.float64)
    if b.ndim != 2 or b.shape[1] != 6 or s.shape != (b.shape[0],):
        raise RunnerError(f"model {source} returned boxes {b.shape} and scores {s.shape}, not (n, 6) and (n,)")
    return Boxes(np.asarray(convert_box_to_standard_mode(b, mode=box_mode), dtype=np.float64), s)


@runtime_checkable
class BoxPredictor(Protocol):
    """A box detector. ``x`` is float32 ``(1, 1, D, H, W)``; the result is its boxes in ``x``'s voxels."""

    def predict_boxes(self, x: FloatArray) -> Boxes: ...


class CallableBoxPredictor:
    """A ``BoxPredictor`` around a plain function: the fake for tests."""

    def __init__(self, fn: Callable[[FloatArray], Boxes]) -> None:
        self._fn = fn
        self.calls = 0

    def predict_boxes(self, x: FloatArray) -> Boxes:
        self.calls += 1
        return self._fn(x)
