"""A MONAI detection bundle (``output.kind: boxes``) as a ``BoxPredictor``.

The bundle layout is the MONAI model zoo's (``lung_nodule_ct_detection``)::

    configs/metadata.json
    configs/inference.json    # network_def (a RetinaNet) and anchor_generator
    models/model.pt           # the state dict of network_def (optionally under a "model" key)

tamsoat builds ``network_def`` and ``anchor_generator`` from the config (with the trust rules of
``inference.runners.bundle_predictor``), loads the weights, and runs them through MONAI's
``RetinaNetDetector`` with the manifest's score threshold and NMS IoU; the detector returns
corner-form (xyzxyz) boxes in the patch's voxels. The bundle's own ``detector``, ``inferer``,
pre- and post-processing items are not run: tamsoat reads the series, resamples, windows, slides
windows and maps boxes to patient mm itself (the manifest's ``input`` section says how).
"""

from __future__ import annotations

from pathlib import Path

from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
from monai.apps.detection.utils.anchor_utils import AnchorGenerator

from inference.runners.bundle_predictor import bundle_root, instantiate, load_network, read_config
from inference.runners.onnx_predictor import RunnerError
from inference.runners.torch_box_predictor import TorchBoxPredictor
from inference.runners.torch_predictor import CpuPrecision, GpuPrecision, default_device

ANCHORS_ID = "anchor_generator"
TOPK_PER_LEVEL = 1000  # the model zoo's box selector settings
DETECTIONS_PER_PATCH = 300
NETWORK_ID_HINT = "network_def and anchor_generator do not form a RetinaNet detector"


def build_detector(weights: Path, *, trusted: bool, score_threshold: float, nms_iou: float) -> RetinaNetDetector:
    """The bundle's network and anchors in a ``RetinaNetDetector`` (inference settings only)."""
    root = bundle_root(weights)
    parser = read_config(root)
    network = load_network(parser, weights, trusted=trusted)
    anchors = instantiate(parser, root, ANCHORS_ID, trusted=trusted)
    if not isinstance(anchors, AnchorGenerator):
        raise RunnerError(f"MONAI bundle {root}: {ANCHORS_ID} is a {type(anchors).__name__}, "
                          "not a MONAI AnchorGenerator")
    try:
        detector = RetinaNetDetector(network, anchors)
    except (ValueError, AttributeError) as exc:  # anchors per location differ from the network's heads
        raise RunnerError(f"MONAI bundle {root}: {NETWORK_ID_HINT}: {exc}") from exc
    detector.set_box_selector_parameters(score_thresh=score_threshold, nms_thresh=nms_iou,
                                         topk_candidates_per_level=TOPK_PER_LEVEL,
                                         detections_per_img=DETECTIONS_PER_PATCH)
    return detector


class DetectionBundlePredictor(TorchBoxPredictor):
    """A MONAI detection bundle, run through ``RetinaNetDetector`` on one patch at a time."""

    def __init__(self, weights: Path, *, score_threshold: float, nms_iou: float, trusted: bool = False,
                 threads: int = 1, device: str | None = None, cpu_precision: CpuPrecision = "fp32",
                 gpu_precision: GpuPrecision = "fp16") -> None:
        detector = build_detector(weights, trusted=trusted, score_threshold=score_threshold, nms_iou=nms_iou)
        super().__init__(detector, box_mode="xyzxyz", source=str(bundle_root(weights)),
                         device=device or default_device(), cpu_precision=cpu_precision,
                         gpu_precision=gpu_precision, threads=threads)
        self.root = bundle_root(weights)
