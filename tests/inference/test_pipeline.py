"""End to end: DICOM files -> volume -> resample -> ONNX model -> findings at the right patient mm."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
import pytest
from factory_dicom import write_volume
from factory_model import threshold_model, write_model_folder

from inference.dicom_series import load_series
from inference.pipeline import Engine, analyze_series
from inference.registry import LoadedModel, Registry
from inference.routing import RoutingError
from inference.runners.axes import XyzPredictor
from inference.volume import Volume
from tamsoat.core.settings import PACKAGE_DEFAULTS

LUNG_HU, NODULE_HU = -800.0, 40.0


def _sphere_series(
    out_dir: Path,
    centre_ijk: Sequence[float],
    radius_mm: float,
    *,
    shape: tuple[int, int, int] = (40, 64, 56),
    spacing_ijk: tuple[float, float, float] = (0.7, 0.75, 1.0),
    origin: Sequence[float] = (-20.3, 11.7, -153.0),
    orientation: Sequence[float] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
) -> tuple[list[Path], np.ndarray]:
    """A bright sphere in lung; returns the files and the sphere's centre in patient mm."""
    o = np.asarray(orientation, dtype=np.float64)
    affine = np.eye(4)
    affine[:3, 0] = o[:3] * spacing_ijk[0]
    affine[:3, 1] = o[3:] * spacing_ijk[1]
    affine[:3, 2] = np.cross(o[:3], o[3:]) * spacing_ijk[2]
    affine[:3, 3] = origin
    source = Volume(array=np.zeros(shape, dtype=np.float32), affine=affine)
    centre_mm = source.index_to_patient(centre_ijk)
    k, j, i = np.indices(shape)
    points = source.index_to_patient(np.stack([i, j, k], axis=-1))
    inside = np.linalg.norm(points - centre_mm, axis=-1) <= radius_mm
    hu = np.where(inside, NODULE_HU, LUNG_HU)
    paths = write_volume(out_dir, hu, origin=origin, orientation=orientation, spacing_ijk=spacing_ijk,
                         slope=1.0, intercept=-1024.0, shuffle_seed=7)
    return paths, centre_mm


@pytest.fixture
def model(tmp_path: Path) -> LoadedModel:
    # logits = 20 * (x - 0.5) on the [-1000, 400] window: positive above -300 HU.
    write_model_folder(tmp_path / "models", build=threshold_model)
    return Registry(tmp_path / "models").load("lung-nodule-phantom", threads=1)


@pytest.mark.parametrize(
    "orientation",
    [(1.0, 0.0, 0.0, 0.0, 1.0, 0.0), (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0)],
    ids=["head-first", "feet-first"],
)
def test_sphere_comes_back_at_its_patient_coordinate(
    tmp_path: Path, model: LoadedModel, orientation: Sequence[float]
) -> None:
    radius = 4.0
    paths, centre_mm = _sphere_series(tmp_path / "ct", (30.4, 25.7, 17.2), radius, orientation=orientation)
    result = analyze_series(paths, model)
    assert len(result.detections) == 1
    found = result.detections[0]
    voxel = max(model.manifest.input.spacing_mm)
    assert np.linalg.norm(np.array(found.center_mm) - centre_mm) < voxel
    assert found.diameter_mm == pytest.approx(2 * radius, rel=0.15)
    assert found.volume_mm3 == pytest.approx(4 / 3 * math.pi * radius**3, rel=0.3)
    assert found.confidence > 0.99
    assert found.label == "Nodule"
    assert result.identity == model.identity
    assert len(result.input_sha256) == 64
    assert set(result.timings) == {"read", "volume", "resample", "inference", "postprocess", "total"}
    assert all(t >= 0 for t in result.timings.values())
    k, sop_uid = result.nearest_slice(found.center_mm)
    assert k == round(17.2) and sop_uid in result.slice_sop_instance_uids


def test_sliding_windows_find_the_same_sphere(tmp_path: Path) -> None:
    models = tmp_path / "models"
    write_model_folder(models, build=threshold_model, input={"patch_size": [16, 16, 16], "overlap": 0.5})
    model = Registry(models).load("lung-nodule-phantom")
    paths, centre_mm = _sphere_series(tmp_path / "ct", (40.0, 30.0, 25.0), 5.0)
    result = analyze_series(paths, model)
    assert len(result.detections) == 1
    assert np.linalg.norm(np.array(result.detections[0].center_mm) - centre_mm) < 1.25


def test_monai_layout_finds_the_same_sphere(tmp_path: Path) -> None:
    """``input.axes: ras``: the model sees the volume turned to RAS as (x, y, z) patches (non-cubic windows
    here); its output comes back on the RAS grid, so the finding stays where the sphere is."""
    models = tmp_path / "models"
    write_model_folder(models, build=threshold_model,
                       input={"axes": "ras", "patch_size": [16, 24, 32], "overlap": 0.5})
    model = Registry(models).load("lung-nodule-phantom")
    assert isinstance(model.predictor, XyzPredictor)
    paths, centre_mm = _sphere_series(tmp_path / "ct", (40.0, 30.0, 25.0), 5.0,
                                      orientation=(-1.0, 0.0, 0.0, 0.0, 1.0, 0.0))
    result = analyze_series(paths, model)
    assert len(result.detections) == 1
    assert np.linalg.norm(np.array(result.detections[0].center_mm) - centre_mm) < 1.25


def test_small_findings_are_dropped(tmp_path: Path, model: LoadedModel) -> None:
    paths, _ = _sphere_series(tmp_path / "ct", (30.0, 30.0, 20.0), 1.0)  # 2 mm < min_diameter_mm 3
    assert analyze_series(paths, model).detections == ()


def test_phantom_series_round_trips(tmp_path: Path) -> None:
    """The phantom writer (training) and the series reader (inference) agree on geometry."""
    phantom_mod = pytest.importorskip("training.phantom")
    series_mod = pytest.importorskip("training.series")
    phantom = phantom_mod.make_phantom(3, shape_kji=(24, 48, 40), spacing_ijk=(0.9, 0.8, 1.5), n_nodules=1,
                                       nodule_diameters_mm=[8.0])
    paths = series_mod.write_ct_series(phantom, tmp_path / "ct")
    volume = load_series(list(reversed(paths)))
    np.testing.assert_allclose(volume.affine, phantom.volume.affine, atol=1e-4)
    # The writer stores integers and clips air below -1024 HU.
    np.testing.assert_allclose(volume.array, np.maximum(phantom.volume.array, -1024.0), atol=1.0)


def test_engine_routes_a_study_and_analyses_the_chosen_series(tmp_path: Path) -> None:
    models = tmp_path / "models"
    write_model_folder(models, build=threshold_model)
    engine = Engine(models, PACKAGE_DEFAULTS / "routing.yaml", threads=1)
    ct_paths, centre_mm = _sphere_series(tmp_path / "ct", (30.0, 30.0, 20.0), 4.0)
    scout = write_volume(tmp_path / "scout", np.zeros((3, 8, 8)), description="Topogram", shuffle_seed=None)
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"garbage")
    ct_uid = str(pydicom.dcmread(ct_paths[0], stop_before_pixels=True).SeriesInstanceUID)
    scout_uid = str(pydicom.dcmread(scout[0], stop_before_pixels=True).SeriesInstanceUID)
    study = {ct_uid: [(p, "sha") for p in ct_paths], scout_uid: scout, "9.9.9": [broken]}
    outcome = engine.analyze_study(study)
    assert outcome is not None
    assert outcome.rule_name == "chest-ct-lung-nodules"
    assert outcome.result.series_instance_uid == ct_uid
    assert len(outcome.result.detections) == 1
    assert np.linalg.norm(np.array(outcome.result.detections[0].center_mm) - centre_mm) < 1.25
    assert "excluded" in outcome.skipped[scout_uid]
    assert outcome.skipped["9.9.9"].startswith("unreadable: broken.dcm is not a readable DICOM file")
    assert engine.analyze_study({scout_uid: scout}) is None


def test_engine_refuses_rules_for_unknown_models(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    with pytest.raises(RoutingError, match=r"routing rule 'chest-ct-lung-nodules' cannot be used: no model"):
        Engine(tmp_path / "models", PACKAGE_DEFAULTS / "routing.yaml")
