"""Boxes -> findings: windows and NMS, measurements in patient mm, box modes and axis orders, RAS."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from factory_detection import write_manifest
from factory_model import constant_box_model, manifest_dict, sha256_of, write_model_folder

from inference.box_postprocess import detections_from_boxes
from inference.pipeline import detect_in_volume
from inference.preprocess import to_ras
from inference.registry import Registry
from inference.runners import Boxes, CallableBoxPredictor, in_xyz, sliding_window_boxes
from inference.runners.onnx_box_predictor import OnnxBoxPredictor
from inference.volume import FloatArray, Volume


def _brightest_box(x: FloatArray) -> Boxes:
    """A 4x4x4 box (corner form, the patch's axes) around the patch's brightest voxel, scored by its value."""
    patch = x[0, 0]
    c = np.array(np.unravel_index(int(np.argmax(patch)), patch.shape), dtype=np.float64)
    return Boxes(np.concatenate([c - 2.0, c + 2.0])[None], np.array([float(patch.max())]))


def _affine(spacing_ijk: tuple[float, float, float], origin: tuple[float, float, float]) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = np.diag(spacing_ijk)
    affine[:3, 3] = origin
    return affine


def test_one_object_seen_by_overlapping_windows_is_one_finding() -> None:
    array = np.zeros((40, 40, 80), dtype=np.float32)
    array[20, 21, 40] = 0.9  # inside all three windows along i (starts 0, 24, 32)
    grid = Volume(array=array, affine=_affine((0.8, 0.8, 1.5), (-10.0, 5.0, 30.0)))
    fake = CallableBoxPredictor(_brightest_box)
    boxes = sliding_window_boxes(fake, array, patch_size=(40, 40, 48), overlap=0.5)
    assert fake.calls == 3 and len(boxes.scores) == 3
    np.testing.assert_allclose(boxes.corners, [[18, 19, 38, 22, 23, 42]] * 3)  # shifted back to volume voxels
    (finding,) = detections_from_boxes(boxes, grid, threshold=0.5, nms_iou=0.2)
    np.testing.assert_allclose(finding.center_mm, grid.index_to_patient([40, 21, 20]))
    assert len(detections_from_boxes(boxes, grid, threshold=0.5, nms_iou=1.0)) == 3  # NMS is what merges them


def test_boxes_are_measured_in_patient_mm() -> None:
    # An oblique-free but flipped grid: i runs to the patient's right, k downwards.
    affine = np.eye(4)
    affine[:3, :3] = np.diag([-0.5, 1.0, -2.0])
    affine[:3, 3] = (100.0, -20.0, 40.0)
    grid = Volume(array=np.zeros((10, 20, 40), dtype=np.float32), affine=affine)
    boxes = Boxes(np.array([[2, 10, 20, 6, 14, 28], [3, 11, 21, 6, 14, 28], [0, 0, 0, 1, 1, 1.0]]),
                  np.array([0.8, 0.7, 0.95]))
    found = detections_from_boxes(boxes, grid, threshold=0.5, nms_iou=0.3, min_diameter_mm=2.0)
    (finding,) = found  # the second box overlaps the first (IoU 0.42); the third is smaller than 2 mm
    np.testing.assert_allclose(finding.center_mm, grid.index_to_patient([24.0, 12.0, 4.0]))
    extents = (8 * 0.5, 4 * 1.0, 4 * 2.0)
    assert finding.diameter_mm == pytest.approx(sum(extents) / 3)
    assert finding.volume_mm3 == pytest.approx(math.pi / 6 * math.prod(extents))
    assert finding.confidence == pytest.approx(0.8)
    assert detections_from_boxes(boxes, grid, threshold=0.99, nms_iou=0.3) == []
    with pytest.raises(ValueError, match="threshold"):
        detections_from_boxes(boxes, grid, threshold=1.0, nms_iou=0.3)


class _Brightest(torch.nn.Module):
    """A box detector written as a model: the brightest voxel's box in cccwhd, along the input's axes."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        v = x[0, 0]
        flat = int(torch.argmax(v))
        h, w = v.shape[1], v.shape[2]
        c = [float(flat // (h * w)), float((flat // w) % h), float(flat % w)]
        return torch.tensor([[c[0], c[1], c[2], 4.0, 4.0, 4.0]]), v.max().reshape(1)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
@pytest.mark.parametrize("axes", ["kji", "ras"])
def test_torchscript_box_detector_in_either_axis_order(tmp_path: Path, axes: str) -> None:
    spacing = (0.7, 0.8, 1.25)
    folder = tmp_path / "models" / "bright" / "1.0.0"
    folder.mkdir(parents=True)
    torch.jit.script(_Brightest()).save(str(folder / "model.ts"))
    data = manifest_dict(id="bright", version="1.0.0", runtime="torchscript",
                         files={"model.ts": sha256_of(folder / "model.ts")})
    data["input"] = {"spacing_mm": list(spacing), "window_hu": [-1000, 400], "patch_size": [24, 32, 32],
                     "axes": axes}
    data["output"] = {"kind": "boxes", "box_mode": "cccwhd", "threshold": 0.5, "nms_iou": 0.1,
                      "label": data["output"]["label"]}
    write_manifest(folder, data)
    hu = np.full((24, 32, 32), -1000.0, dtype=np.float32)
    hu[5, 20, 9] = 300.0
    volume = Volume(array=hu, affine=_affine(spacing, (-12.0, 40.0, -90.0)))
    (finding,) = detect_in_volume(volume, Registry(tmp_path / "models").load("bright"))
    np.testing.assert_allclose(finding.center_mm, volume.index_to_patient([9, 20, 5]), atol=1e-9)
    assert finding.diameter_mm == pytest.approx(4 * sum(spacing) / 3)


def test_onnx_box_detector(tmp_path: Path) -> None:
    spacing = (0.7, 0.8, 1.25)
    write_model_folder(tmp_path / "models", build=lambda p: constant_box_model(p, [5, 20, 9, 4, 6, 2]),
                       input={"spacing_mm": list(spacing), "patch_size": [24, 32, 32]},
                       output={"kind": "boxes", "box_mode": "cccwhd", "nms_iou": 0.2})
    model = Registry(tmp_path / "models").load("lung-nodule-phantom")
    assert isinstance(model.predictor, OnnxBoxPredictor)
    hu = np.full((24, 32, 32), -1000.0, dtype=np.float32)
    hu[3, 3, 3] = 300.0
    volume = Volume(array=hu, affine=_affine(spacing, (-12.0, 40.0, -90.0)))
    (finding,) = detect_in_volume(volume, model)
    np.testing.assert_allclose(finding.center_mm, volume.index_to_patient([9, 20, 5]), atol=1e-9)
    assert finding.diameter_mm == pytest.approx((2 * 0.7 + 6 * 0.8 + 4 * 1.25) / 3)  # (k, j, i) extents 4, 6, 2
    assert finding.confidence == pytest.approx(1300 / 1400, abs=1e-6)


def test_xyz_adapter_hands_the_model_x_y_z() -> None:
    seen: list[tuple[int, ...]] = []

    def inner(x: FloatArray) -> Boxes:
        seen.append(x.shape)
        return Boxes(np.array([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]]), np.array([0.9]))

    boxes = in_xyz(CallableBoxPredictor(inner)).predict_boxes(np.zeros((1, 1, 4, 5, 6), dtype=np.float32))
    assert seen == [(1, 1, 6, 5, 4)]
    np.testing.assert_array_equal(boxes.corners, [[3.0, 2.0, 1.0, 6.0, 5.0, 4.0]])


@pytest.mark.parametrize(
    "direction",
    [np.diag([0.7, 0.8, 1.25]),  # axial, as DICOM stacks it: i left, j posterior
     np.array([[0.0, 0.0, 2.0], [0.7, 0.0, 0.0], [0.0, -0.8, 0.0]]),  # axes permuted
     np.array([[-0.7, 0.0, 0.0], [0.0, 0.0, -1.25], [0.0, 0.8, 0.0]])],  # coronal
)
def test_to_ras_moves_no_voxel_in_the_patient(direction: np.ndarray) -> None:
    array = np.random.default_rng(0).random((4, 5, 6)).astype(np.float32)
    affine = np.eye(4)
    affine[:3, :3] = direction
    affine[:3, 3] = (10.0, -5.0, 3.0)
    source = Volume(array=array, affine=affine)
    ras = to_ras(source)
    signs = np.sign(ras.affine[:3, :3])
    np.testing.assert_array_equal(signs, np.diag([-1.0, -1.0, 1.0]))  # i right, j anterior, k superior (LPS)
    k, j, i = np.indices(array.shape)
    points = source.index_to_patient(np.stack([i, j, k], axis=-1).reshape(-1, 3))
    index = ras.patient_to_index(points)
    whole = np.rint(index).astype(int)
    np.testing.assert_allclose(index, whole, atol=1e-9)
    np.testing.assert_array_equal(ras.array[whole[:, 2], whole[:, 1], whole[:, 0]], array.reshape(-1))


def test_to_ras_refuses_axes_it_cannot_name() -> None:
    affine = np.eye(4)
    affine[:3, :3] = [[0.7, 0.7, 0.0], [0.7, 0.7, 0.0], [0.0, 0.0, 1.0]]
    with pytest.raises(ValueError, match="too oblique"):
        to_ras(Volume(array=np.zeros((2, 2, 2), dtype=np.float32), affine=affine))
