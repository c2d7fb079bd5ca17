"""The ONNX runner and the sliding window: windows tile the volume, blending does not change results."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from factory_model import conv_model, threshold_model

from inference.runners import (
    CallablePredictor,
    OnnxPredictor,
    RunnerError,
    plan_windows,
    sliding_window_predict,
)
from inference.runners.sliding_window import plan_axis


def test_axis_plan_covers_the_axis() -> None:
    plan = plan_axis(100, 32, overlap=0.25)
    assert plan.padded == 100 and plan.window == 32
    assert plan.starts[0] == 0 and plan.starts[-1] == 100 - 32
    assert all(b - a <= 24 for a, b in zip(plan.starts, plan.starts[1:], strict=False))
    small = plan_axis(21, 32, overlap=0.25, divisible_by=8)
    assert (small.padded, small.window, small.starts) == (24, 24, (0,))
    fixed = plan_axis(21, 32, overlap=0.25, divisible_by=8, fixed=True)
    assert (fixed.padded, fixed.window, fixed.starts) == (32, 32, (0,))


def test_whole_volume_in_one_window_when_it_fits() -> None:
    plans = plan_windows((40, 30, 20), (96, 96, 96), 0.25, divisible_by=8)
    assert [(p.window, p.starts) for p in plans] == [(40, (0,)), (32, (0,)), (24, (0,))]


@pytest.fixture
def volume() -> np.ndarray:
    return np.random.default_rng(1).random((37, 45, 29), dtype=np.float32)


def test_sliding_window_equals_whole_volume_for_a_pointwise_model(tmp_path: Path, volume: np.ndarray) -> None:
    predictor = OnnxPredictor(conv_model(tmp_path / "m.onnx", kernel=1), threads=1)
    whole = predictor.predict(volume[None, None])[0, 0]
    windowed = sliding_window_predict(predictor, volume, (16, 16, 16), overlap=0.5, divisible_by=8)
    assert windowed.shape == volume.shape and windowed.dtype == np.float32
    np.testing.assert_allclose(windowed, whole, atol=1e-5)
    in_one = sliding_window_predict(predictor, volume, (96, 96, 96), overlap=0.25, divisible_by=8)
    np.testing.assert_allclose(in_one, whole, atol=1e-5)


def test_sliding_window_is_close_to_whole_volume_for_a_conv_model(tmp_path: Path, volume: np.ndarray) -> None:
    predictor = OnnxPredictor(conv_model(tmp_path / "m.onnx", kernel=3), threads=1)
    whole = predictor.predict(volume[None, None])[0, 0]
    windowed = sliding_window_predict(predictor, volume, (16, 16, 16), overlap=0.5)
    # Only voxels next to a window border see the zero padding; the Gaussian keeps their weight low.
    diff = np.abs(windowed - whole)
    assert float(np.median(diff)) < 1e-5
    assert float(diff.max()) < 0.01 * float(np.abs(whole).max())


def test_batching_does_not_change_the_result(tmp_path: Path, volume: np.ndarray) -> None:
    predictor = OnnxPredictor(conv_model(tmp_path / "m.onnx", kernel=3), threads=1)
    one = sliding_window_predict(predictor, volume, (16, 16, 16), overlap=0.25, batch_size=1)
    four = sliding_window_predict(predictor, volume, (16, 16, 16), overlap=0.25, batch_size=4)
    np.testing.assert_allclose(four, one, atol=1e-5)


def test_fixed_shape_model_gets_padded_windows(tmp_path: Path) -> None:
    path = threshold_model(tmp_path / "fixed.onnx", level=0.5, gain=2.0, shape=[1, 1, 16, 16, 16])
    predictor = OnnxPredictor(path, threads=1)
    assert predictor.fixed_shape == (16, 16, 16) and predictor.max_batch == 1
    vol = np.random.default_rng(2).random((10, 20, 12), dtype=np.float32)
    out = sliding_window_predict(predictor, vol, (96, 96, 96), overlap=0.25, batch_size=8)
    np.testing.assert_allclose(out, 2.0 * (vol - 0.5), atol=1e-5)


def test_runner_refuses_bad_models_and_inputs(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(RunnerError, match="cannot load ONNX model"):
        OnnxPredictor(bad)
    predictor = OnnxPredictor(threshold_model(tmp_path / "m.onnx"))
    with pytest.raises(RunnerError, match=r"model input must be \(N, 1, D, H, W\)"):
        predictor.predict(np.zeros((8, 8, 8), dtype=np.float32))


def test_callable_predictor_is_a_fake_model(volume: np.ndarray) -> None:
    fake = CallablePredictor(lambda x: 2.0 * x)
    out = sliding_window_predict(fake, volume, (16, 16, 16), overlap=0.25, divisible_by=8, batch_size=64)
    np.testing.assert_allclose(out, 2.0 * volume, atol=1e-5)
    assert fake.calls == 1  # all windows in one batch
