"""The model seam: anything that turns an input batch into per-voxel output of the same size."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

from inference.volume import FloatArray


@runtime_checkable
class Predictor(Protocol):
    """A model. ``x`` is float32 ``(N, 1, D, H, W)``; the result is float32 ``(N, 1, D, H, W)``.

    ``fixed_shape`` is the spatial input size the model requires, or None when any size works
    (subject to the manifest's ``divisible_by``). ``max_batch`` is the largest N it accepts.
    """

    @property
    def fixed_shape(self) -> tuple[int, int, int] | None: ...

    @property
    def max_batch(self) -> int | None: ...

    def predict(self, x: FloatArray) -> FloatArray: ...


class CallablePredictor:
    """A ``Predictor`` around a plain function ``(N, 1, D, H, W) -> (N, 1, D, H, W)``: the fake for tests."""

    def __init__(self, fn: Callable[[FloatArray], FloatArray]) -> None:
        self._fn = fn
        self.calls = 0

    @property
    def fixed_shape(self) -> tuple[int, int, int] | None:
        return None

    @property
    def max_batch(self) -> int | None:
        return None

    def predict(self, x: FloatArray) -> FloatArray:
        self.calls += 1
        return self._fn(x)
