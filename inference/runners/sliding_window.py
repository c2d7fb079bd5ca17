"""Sliding-window inference over a normalized volume: per-voxel outputs are blended with a Gaussian
(``sliding_window_predict``), boxes are collected in volume voxels (``sliding_window_boxes``; the
post-processing merges those that overlap across windows).

Along each axis the window is the manifest's patch size, or the whole (padded) axis when that is
smaller, so a volume that fits in one patch runs in one call. Inputs are padded with
``pad_value`` (0 = the bottom of the intensity window, i.e. air) to a multiple of
``divisible_by``; the result is cropped back to the volume's shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import product

import numpy as np
import numpy.typing as npt

from inference.runners.box_predictor import Boxes, BoxPredictor
from inference.runners.predictor import Predictor
from inference.volume import FloatArray


@dataclass(frozen=True)
class AxisPlan:
    """Windows along one axis: each starts at ``starts[n]`` and is ``window`` voxels long."""

    size: int  # voxels in the volume
    padded: int  # voxels after padding
    window: int
    starts: tuple[int, ...]


def _round_up(n: int, multiple: int) -> int:
    return int(math.ceil(n / multiple) * multiple)


def plan_axis(size: int, patch: int, overlap: float, divisible_by: int = 1, fixed: bool = False) -> AxisPlan:
    """Plan the windows along one axis of ``size`` voxels."""
    if size < 1 or patch < 1:
        raise ValueError("size and patch must be positive")
    if not fixed and size <= patch:
        window = _round_up(size, divisible_by)
        return AxisPlan(size=size, padded=window, window=window, starts=(0,))
    padded = max(size, patch)
    stride = max(1, int(patch * (1.0 - overlap)))
    count = math.ceil((padded - patch) / stride) + 1
    starts = tuple(sorted({min(n * stride, padded - patch) for n in range(count)}))
    return AxisPlan(size=size, padded=padded, window=patch, starts=starts)


def plan_windows(
    shape: tuple[int, int, int],
    patch_size: tuple[int, int, int],
    overlap: float,
    divisible_by: int = 1,
    fixed_shape: tuple[int, int, int] | None = None,
) -> tuple[AxisPlan, AxisPlan, AxisPlan]:
    """Plan the windows for a ``(D, H, W)`` volume; ``fixed_shape`` forces the model's own input size."""
    patch = fixed_shape or patch_size
    fixed = fixed_shape is not None
    d, h, w = (plan_axis(s, p, overlap, divisible_by, fixed) for s, p in zip(shape, patch, strict=True))
    return d, h, w


def gaussian_profile(length: int, sigma_scale: float = 0.125) -> npt.NDArray[np.float64]:
    """A 1-D Gaussian over ``length`` voxels, peak 1, kept above a floor so edges still count."""
    centre = (length - 1) / 2.0
    sigma = max(sigma_scale * length, 1e-6)
    x = np.arange(length, dtype=np.float64) - centre
    g = np.exp(-0.5 * (x / sigma) ** 2)
    return np.maximum(g, 1e-3)


def _axis_norm(plan: AxisPlan, profile: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    total = np.zeros(plan.padded, dtype=np.float64)
    for s in plan.starts:
        total[s : s + plan.window] += profile
    return total


def _shape(volume: FloatArray) -> tuple[int, int, int]:
    if volume.ndim != 3:
        raise ValueError(f"volume must be 3-D (D, H, W), not {volume.shape}")
    return int(volume.shape[0]), int(volume.shape[1]), int(volume.shape[2])


def _padded(volume: FloatArray, plans: tuple[AxisPlan, AxisPlan, AxisPlan], pad_value: float) -> FloatArray:
    padded_shape = tuple(p.padded for p in plans)
    if padded_shape == volume.shape:
        return np.ascontiguousarray(volume, dtype=np.float32)
    source = np.full(padded_shape, pad_value, dtype=np.float32)
    source[: volume.shape[0], : volume.shape[1], : volume.shape[2]] = volume
    return source


def sliding_window_predict(
    predictor: Predictor,
    volume: FloatArray,
    patch_size: tuple[int, int, int],
    overlap: float = 0.25,
    divisible_by: int = 1,
    batch_size: int = 1,
    pad_value: float = 0.0,
) -> FloatArray:
    """Run ``predictor`` over a ``(D, H, W)`` float32 volume; return the blended ``(D, H, W)`` output."""
    shape = _shape(volume)
    plans = plan_windows(shape, patch_size, overlap, divisible_by, predictor.fixed_shape)
    padded_shape = tuple(p.padded for p in plans)
    source = _padded(volume, plans, pad_value)

    profiles = [gaussian_profile(p.window) for p in plans]
    weight = (
        profiles[0][:, None, None] * profiles[1][None, :, None] * profiles[2][None, None, :]
    ).astype(np.float32)
    # The windows form a full grid, so the sum of the weights is separable: no 3-D count array.
    norms = [_axis_norm(p, prof) for p, prof in zip(plans, profiles, strict=True)]

    window = tuple(p.window for p in plans)
    limit = predictor.max_batch
    batch = max(1, min(batch_size, limit) if limit is not None else batch_size)
    out = np.zeros(padded_shape, dtype=np.float32)
    corners = list(product(*(p.starts for p in plans)))
    x = np.empty((batch, 1, *window), dtype=np.float32)
    for first in range(0, len(corners), batch):
        group = corners[first : first + batch]
        for n, (z, y, xx) in enumerate(group):
            x[n, 0] = source[z : z + window[0], y : y + window[1], xx : xx + window[2]]
        pred = predictor.predict(x[: len(group)])
        for n, (z, y, xx) in enumerate(group):
            out[z : z + window[0], y : y + window[1], xx : xx + window[2]] += pred[n, 0] * weight
    del source
    out = out[: shape[0], : shape[1], : shape[2]]
    out /= norms[0][: shape[0], None, None].astype(np.float32)
    out /= norms[1][None, : shape[1], None].astype(np.float32)
    out /= norms[2][None, None, : shape[2]].astype(np.float32)
    return np.ascontiguousarray(out)


def sliding_window_boxes(
    predictor: BoxPredictor,
    volume: FloatArray,
    patch_size: tuple[int, int, int],
    overlap: float = 0.25,
    divisible_by: int = 1,
    pad_value: float = 0.0,
) -> Boxes:
    """Run a box detector over a ``(D, H, W)`` volume, one window at a time; every window's boxes, in
    the volume's voxels and clipped to it. Overlapping windows report the same object more than once:
    ``inference.box_postprocess`` merges them (non-maximum suppression)."""
    shape = _shape(volume)
    plans = plan_windows(shape, patch_size, overlap, divisible_by)
    source = _padded(volume, plans, pad_value)
    window = tuple(p.window for p in plans)
    found = []
    for z, y, x in product(*(p.starts for p in plans)):
        patch = source[None, None, z : z + window[0], y : y + window[1], x : x + window[2]]
        found.append(predictor.predict_boxes(np.ascontiguousarray(patch)).shifted((z, y, x)))
    boxes = Boxes.concatenate(found)
    corners = np.clip(boxes.corners, 0.0, np.array(shape * 2, dtype=np.float64))
    inside = np.all(corners[:, 3:] > corners[:, :3], axis=1)  # boxes that lay wholly in the padding vanish
    return Boxes(corners[inside], boxes.scores[inside])
