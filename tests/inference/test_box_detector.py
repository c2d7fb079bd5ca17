"""Box-output detectors (``output.kind: boxes``): a MONAI detection bundle in the model zoo's layout.

A tiny RetinaNet (``factory_detection``) is calibrated so that exactly one anchor fires, on the cell
holding a bright blob placed in patient mm; its box is then known in the model's RAS voxel grid. The
finding must sit where that box is (MONAI's own detector, mapped by the grid's affine) and where the
blob is, through ``detect_in_volume`` and through ``Engine`` from DICOM files alike, with the same
identity fields as a logits model.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from factory_detection import (
    ANCHOR_SHAPES,
    PEAK_SCORE,
    SPACING_MM,
    box_manifest,
    calibrate,
    declarative_config,
    tiny_retinanet,
    write_bundle,
    write_manifest,
    zoo_style_config,
)
from factory_dicom import write_volume
from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
from monai.apps.detection.networks.retinanet_network import RetinaNet
from monai.apps.detection.utils.anchor_utils import AnchorGeneratorWithAnchorShape

from inference.manifest import Manifest, ManifestError, parse_manifest
from inference.pipeline import Engine, detect_in_volume, model_input
from inference.preprocess import to_ras
from inference.registry import Registry, create_predictor
from inference.runners.bundle_predictor import BundleTrustError
from inference.runners.detection_bundle import DetectionBundlePredictor
from inference.volume import Volume
from tamsoat.core.domain import Detection

SHAPE_KJI = (32, 64, 64)  # 64 x 64 x 32 voxels (x, y, z) at the zoo's spacing
PATCH_KJI = (32, 64, 64)  # one window: the calibration holds for exactly this input
BLOB_RAS_INDEX = (21.0, 37.0, 13.0)  # odd: the centre of an anchor of the stride-2 feature map
ORIGIN = (-30.5, 12.25, -160.0)


def _source_affine() -> np.ndarray:
    """An axial series as DICOM stacks it (i to the patient's left, j posterior): RAS flips i and j."""
    affine = np.eye(4)
    affine[:3, :3] = np.diag(SPACING_MM)
    affine[:3, 3] = ORIGIN
    return affine


def _blob_volume() -> tuple[Volume, np.ndarray]:
    """Lung-like air with a bright Gaussian blob (sigma 2 mm); its centre in patient mm."""
    empty = Volume(array=np.zeros(SHAPE_KJI, dtype=np.float32), affine=_source_affine())
    centre_mm = to_ras(empty).index_to_patient(BLOB_RAS_INDEX)
    k, j, i = np.indices(SHAPE_KJI)
    points = empty.index_to_patient(np.stack([i, j, k], axis=-1))
    r2 = ((points - centre_mm) ** 2).sum(axis=-1)
    hu = -1000.0 + 1300.0 * np.exp(-0.5 * r2 / 2.0**2)
    return Volume(array=np.round(hu).astype(np.float32), affine=empty.affine), centre_mm


@pytest.fixture(scope="module")
def blob() -> tuple[Volume, np.ndarray]:
    return _blob_volume()


@pytest.fixture(scope="module")
def net(blob: tuple[Volume, np.ndarray]) -> RetinaNet:
    """The tiny RetinaNet, calibrated on the blob volume's model input (one window)."""
    volume, _ = blob
    net = tiny_retinanet()
    calibrate(net, _xyz(model_input(volume, _probe())))
    return net


def _probe() -> Manifest:
    return parse_manifest(box_manifest("probe", {"models/model.pt": "0" * 64}, patch_size=PATCH_KJI))


def _xyz(grid: Volume) -> np.ndarray:
    """The grid as MONAI's ``(1, 1, x, y, z)`` batch."""
    return np.ascontiguousarray(grid.array.transpose(2, 1, 0))[None, None]


@pytest.fixture(scope="module")
def models_dir(net: RetinaNet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """models/ with the network as a declarative (untrusted) and as a zoo-style (trusted) bundle."""
    root = tmp_path_factory.mktemp("models")
    for model_id, config, trusted in (("rn-plain", declarative_config(), False), ("rn-zoo", zoo_style_config(), True)):
        folder = root / model_id / "1.0.0"
        files = write_bundle(folder, net, config)
        write_manifest(folder, box_manifest(model_id, files, patch_size=PATCH_KJI, trusted=trusted))
    return root


def _routing(path: Path, model_id: str) -> Path:
    rules = {"rules": [{"name": "chest-ct", "model": model_id, "match": {"Modality": "CT"},
                        "series": {"min_slices": 20}}]}
    path.write_text(yaml.safe_dump(rules))
    return path


def _expected_box_mm(net: RetinaNet, volume: Volume) -> tuple[np.ndarray, np.ndarray]:
    """MONAI's own ``RetinaNetDetector`` on the model input, its one box mapped through the grid's affine:
    (centre mm, extent mm). Nothing of tamsoat's runners, windows or post-processing is involved."""
    grid = model_input(volume, _probe())
    anchors = AnchorGeneratorWithAnchorShape(feature_map_scales=[1], base_anchor_shapes=ANCHOR_SHAPES)
    detector = RetinaNetDetector(net, anchors).eval()
    detector.set_box_selector_parameters(score_thresh=0.5, nms_thresh=0.22)
    with torch.inference_mode():
        (found,) = detector(torch.from_numpy(_xyz(grid)))
    assert found["boxes"].shape == (1, 6), found
    box = found["boxes"][0].double().numpy()
    return grid.index_to_patient((box[:3] + box[3:]) / 2.0), (box[3:] - box[:3]) * np.array(grid.spacing)


def _one(found: list[Detection] | tuple[Detection, ...]) -> Detection:
    assert len(found) == 1, found
    return found[0]


def test_finding_sits_where_the_box_is(models_dir: Path, net: RetinaNet, blob: tuple[Volume, np.ndarray]) -> None:
    volume, blob_mm = blob
    model = Registry(models_dir).load("rn-plain")
    finding = _one(detect_in_volume(volume, model))
    box_centre_mm, box_extent_mm = _expected_box_mm(net, volume)
    # The box is the first anchor, centred on the blob's voxel of the RAS grid.
    np.testing.assert_allclose(box_extent_mm, np.array(ANCHOR_SHAPES[0]) * SPACING_MM)
    np.testing.assert_allclose(box_centre_mm, blob_mm, atol=1e-6)
    assert math.dist(finding.center_mm, box_centre_mm) < 1e-6
    assert finding.diameter_mm == pytest.approx(float(box_extent_mm.mean()))
    assert finding.volume_mm3 == pytest.approx(math.pi / 6.0 * float(np.prod(box_extent_mm)))
    assert finding.confidence == pytest.approx(PEAK_SCORE, abs=1e-3)
    assert finding.label == "Nodule"


def test_service_path_gives_the_same_finding(models_dir: Path, blob: tuple[Volume, np.ndarray],
                                             tmp_path: Path) -> None:
    volume, blob_mm = blob
    series = write_volume(tmp_path / "series", volume.array, origin=ORIGIN, spacing_ijk=SPACING_MM,
                          slope=1.0, intercept=-1024.0, shuffle_seed=3)
    direct = _one(detect_in_volume(volume, Registry(models_dir).load("rn-plain")))
    for model_id in ("rn-plain", "rn-zoo"):
        engine = Engine(models_dir, _routing(tmp_path / f"{model_id}.yaml", model_id))
        outcome = engine.analyze_study({"1.2.3": series})
        assert outcome is not None
        result = outcome.result
        manifest = engine.registry.get(model_id).manifest
        assert (result.identity.model_id, result.identity.version) == (model_id, "1.0.0")
        assert result.identity.weights_sha256 == manifest.files["models/model.pt"] == manifest.weights_sha256
        assert len(result.input_sha256) == 64
        finding = _one(result.detections)
        assert math.dist(finding.center_mm, blob_mm) <= min(SPACING_MM)  # within a voxel
        assert math.dist(finding.center_mm, direct.center_mm) < 1e-6
        assert finding.diameter_mm == pytest.approx(direct.diameter_mm)
        assert finding.confidence == pytest.approx(direct.confidence, abs=1e-3)
        assert {"inference", "postprocess", "total"} <= set(result.timings)


def test_config_items_outside_the_detector_are_never_run(models_dir: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The bundle's own ``run``/``detector_ops`` items (here: one that writes MARKER) are not evaluated,
    trusted or not."""
    monkeypatch.chdir(tmp_path)
    registry = Registry(models_dir)
    registry.load("rn-plain")
    registry.load("rn-zoo")
    assert not (tmp_path / "MARKER").exists()


def test_per_voxel_factory_refuses_a_box_model(models_dir: Path) -> None:
    """``create_predictor`` (training's evaluation path) wants a per-voxel map and says so."""
    with pytest.raises(ManifestError, match="outputs boxes, not a per-voxel map"):
        create_predictor(Registry(models_dir).get("rn-plain"), device="cpu")


def test_zoo_style_bundle_needs_trust(models_dir: Path) -> None:
    folder = models_dir / "rn-zoo" / "1.0.0"
    with pytest.raises(BundleTrustError, match=r"Python expression|outside"):
        DetectionBundlePredictor(folder / "models" / "model.pt", score_threshold=0.5, nms_iou=0.2, device="cpu")


def test_anchors_that_do_not_fit_the_network_are_refused(tmp_path: Path) -> None:
    config = declarative_config()
    config["anchor_generator"] = {**config["anchor_generator"], "base_anchor_shapes": [[6, 6, 4]]}
    write_bundle(tmp_path / "b", tiny_retinanet(), config)
    with pytest.raises(Exception, match="do not form a RetinaNet detector"):
        DetectionBundlePredictor(tmp_path / "b" / "models" / "model.pt", score_threshold=0.5, nms_iou=0.2,
                                 device="cpu")


def _manifest(**output: Any) -> dict[str, Any]:
    data = box_manifest("m", {"configs/inference.json": "a" * 64, "configs/metadata.json": "b" * 64,
                              "models/model.pt": "c" * 64}, patch_size=PATCH_KJI)
    data["output"] = {**data["output"], **output}
    return data


def test_manifest_box_fields_are_checked_at_start_up() -> None:
    ok = parse_manifest(_manifest())
    assert ok.output.kind == "boxes" and ok.output.corner_mode == "xyzxyz" and ok.output.nms_iou == 0.22
    assert ok.input.axes == "ras"
    no_nms = _manifest()
    del no_nms["output"]["nms_iou"]
    with pytest.raises(ManifestError, match="output: kind boxes needs nms_iou"):
        parse_manifest(no_nms)
    with pytest.raises(ManifestError, match="box_mode and nms_iou apply to kind boxes only, not logits"):
        parse_manifest(_manifest(kind="logits", box_mode="cccwhd"))
    with pytest.raises(ManifestError, match=r"output\.box_mode: Input should be"):
        parse_manifest(_manifest(box_mode="ccwh"))
    with pytest.raises(ManifestError, match="RetinaNetDetector, which gives xyzxyz boxes"):
        parse_manifest(_manifest(box_mode="cccwhd"))
    with pytest.raises(ManifestError, match=r"input\.axes"):
        parse_manifest({**_manifest(), "input": {**_manifest()["input"], "axes": "lps"}})
    ts = parse_manifest({**_manifest(box_mode="cccwhd"), "runtime": "torchscript", "files": {"m.ts": "a" * 64}})
    assert ts.output.corner_mode == "cccwhd"
    logits = _manifest(kind="logits")
    del logits["output"]["nms_iou"]
    parsed = parse_manifest({**logits, "runtime": "onnx", "files": {"model.onnx": "a" * 64}})
    assert parsed.output.box_mode is None and parsed.output.nms_iou is None
