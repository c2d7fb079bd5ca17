"""The training stage's simple evaluator: components, centroids, centre-within-radius matching."""

from __future__ import annotations

import numpy as np
import pytest

from inference.volume import Volume
from training.evaluate import Detection, detect, match, sliding_window_logits
from training.phantom import PhantomNodule


def _grid(shape: tuple[int, int, int], spacing: float = 1.25) -> Volume:
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = (-50.0, -60.0, -200.0)
    return Volume(array=np.zeros(shape, dtype=np.float32), affine=affine)


def _ball(shape: tuple[int, int, int], centre_kji: tuple[float, float, float], radius: float) -> np.ndarray:
    k, j, i = np.indices(shape)
    return ((k - centre_kji[0]) ** 2 + (j - centre_kji[1]) ** 2 + (i - centre_kji[2]) ** 2) <= radius**2


def test_detect_returns_centroid_and_equivalent_diameter() -> None:
    shape = (40, 48, 56)
    grid = _grid(shape)
    logits = np.full(shape, -6.0, dtype=np.float32)
    logits[_ball(shape, (20, 24, 30), 4.0)] = 5.0
    logits[10, 10, 10] = 5.0  # a single voxel: below the minimum diameter
    dets = detect(logits, grid, threshold=0.5, min_diameter_mm=3.0)
    assert len(dets) == 1
    d = dets[0]
    np.testing.assert_allclose(d.center_mm, grid.index_to_patient([30, 24, 20]), atol=1e-6)
    assert d.diameter_mm == pytest.approx(2 * 4.0 * 1.25, rel=0.1)
    assert d.score == pytest.approx(1 / (1 + np.exp(-5.0)))


def test_match_counts_hits_and_false_positives() -> None:
    nodules = [PhantomNodule((0.0, 0.0, 0.0), 10.0, "solid"), PhantomNodule((50.0, 0.0, 0.0), 4.0, "ground-glass")]
    dets = [Detection((3.0, 0.0, 0.0), 9.0, 0.9), Detection((52.0, 0.0, 0.0), 4.0, 0.8),
            Detection((0.0, 40.0, 0.0), 5.0, 0.7)]
    found, fps = match(dets, nodules)
    assert found == [True, True] and fps == 1
    found, fps = match([Detection((6.0, 0.0, 0.0), 9.0, 0.9)], nodules)
    assert found == [False, False] and fps == 1


class _Identity:
    """A stand-in ONNX session whose 'logits' are its input, to test the tiling."""

    class _Input:
        name = "image"

    def get_inputs(self) -> list[_Input]:
        return [self._Input()]

    def run(self, _outputs: None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return [feeds["image"].copy()]


def test_sliding_window_reassembles_the_volume() -> None:
    rng = np.random.default_rng(0)
    image = rng.random((37, 50, 61), dtype=np.float32)
    out = sliding_window_logits(_Identity(), image, (16, 24, 32), divisible_by=8, overlap=8)  # type: ignore[arg-type]
    np.testing.assert_allclose(out, image, atol=1e-5)
