"""Post-processing: components, probability-weighted centres in patient mm, sizes, confidence order."""

from __future__ import annotations

import math

import numpy as np
import pytest

from inference.postprocess import detections_from_output, equivalent_diameter_mm
from inference.volume import Volume


def _grid(shape: tuple[int, int, int]) -> Volume:
    affine = np.array(
        [[-2.0, 0.0, 0.0, 100.0], [0.0, 1.5, 0.0, -50.0], [0.0, 0.0, -3.0, 20.0], [0.0, 0.0, 0.0, 1.0]]
    )
    return Volume(array=np.zeros(shape, dtype=np.float32), affine=affine)


def test_components_are_measured_in_patient_space() -> None:
    grid = _grid((20, 20, 20))
    logits = np.full(grid.array.shape, -10.0, dtype=np.float32)
    logits[2:5, 2:5, 2:5] = 3.0  # 27 voxels, centre (k, j, i) = (3, 3, 3)
    logits[10:12, 12:14, 14:16] = 1.0  # 8 voxels, centre (10.5, 12.5, 14.5)
    logits[10, 12, 14] = 2.0  # pulls the weighted centre towards this voxel
    found = detections_from_output(logits, grid, threshold=0.5, kind="logits")
    assert len(found) == 2
    first, second = found
    assert first.confidence == pytest.approx(1 / (1 + math.exp(-3.0)))
    np.testing.assert_allclose(first.center_mm, grid.index_to_patient([3, 3, 3]), atol=1e-9)
    assert first.volume_mm3 == pytest.approx(27 * 2.0 * 1.5 * 3.0)
    assert first.diameter_mm == pytest.approx(equivalent_diameter_mm(27 * 9.0))
    assert second.confidence == pytest.approx(1 / (1 + math.exp(-2.0)))
    p_hi, p_lo = 1 / (1 + math.exp(-2.0)), 1 / (1 + math.exp(-1.0))
    idx = np.array([[k, j, i] for k in (10, 11) for j in (12, 13) for i in (14, 15)], dtype=float)
    w = np.where((idx == [10, 12, 14]).all(axis=1), p_hi, p_lo)
    centre_kji = (w[:, None] * idx).sum(axis=0) / w.sum()
    np.testing.assert_allclose(second.center_mm, grid.index_to_patient(centre_kji[::-1]), atol=1e-9)
    assert second.label == "nodule"


def test_threshold_min_diameter_and_probabilities() -> None:
    grid = _grid((10, 10, 10))
    probs = np.zeros(grid.array.shape, dtype=np.float32)
    probs[1, 1, 1] = 0.9  # one voxel: 9 mm3 -> 2.58 mm diameter
    probs[5:8, 5:8, 5:8] = 0.6
    probs[0, 9, 9] = 0.4  # below threshold
    found = detections_from_output(probs, grid, threshold=0.5, kind="probabilities", min_diameter_mm=3.0,
                                   label="Nodule")
    assert len(found) == 1
    assert found[0].confidence == pytest.approx(0.6)
    assert found[0].label == "Nodule"
    both = detections_from_output(probs, grid, threshold=0.5, kind="probabilities")
    assert [round(d.confidence, 2) for d in both] == [0.9, 0.6]


def test_diagonal_voxels_are_one_component_and_nothing_found_is_empty() -> None:
    grid = _grid((6, 6, 6))
    logits = np.full(grid.array.shape, -5.0, dtype=np.float32)
    assert detections_from_output(logits, grid, threshold=0.5) == []
    logits[1, 1, 1] = logits[2, 2, 2] = 5.0
    assert len(detections_from_output(logits, grid, threshold=0.5)) == 1


def test_output_must_match_the_grid() -> None:
    with pytest.raises(ValueError, match="does not match the volume"):
        detections_from_output(np.zeros((2, 2, 2), dtype=np.float32), _grid((3, 3, 3)), threshold=0.5)
