"""Boxes from a box detector -> findings: score threshold, NMS across windows, measurements in patient mm.

Per box (corner form along the grid's ``[k, j, i]`` array axes, in voxels, from
``inference.runners.sliding_window_boxes``):

* **centre**: the box centre, mapped to patient mm through ``grid.affine`` (``Volume.index_to_patient``,
  the same mapping the per-voxel route uses; a box coordinate c is voxel index c, as in MONAI);
* **diameter**: the mean of the box's three extents in mm (for a sphere's box, its diameter);
* **volume**: the ellipsoid inscribed in the box, ``pi / 6 * w * h * d`` mm3;
* **confidence**: the detector's score.

Boxes scoring below ``threshold`` are dropped; of boxes overlapping by more than ``nms_iou``
(intersection over union, e.g. one nodule seen by two overlapping windows) the highest-scoring one
is kept (``monai.data.box_utils.non_max_suppression``). Boxes smaller than ``min_diameter_mm`` are
dropped. The result is sorted by confidence, highest first.
"""

from __future__ import annotations

import math

import numpy as np
from monai.data.box_utils import non_max_suppression

from inference.runners.box_predictor import Boxes
from inference.volume import Volume
from tamsoat.core.domain import Detection


def detections_from_boxes(
    boxes: Boxes,
    grid: Volume,
    threshold: float,
    nms_iou: float,
    min_diameter_mm: float = 0.0,
    label: str = "nodule",
) -> list[Detection]:
    """Turn boxes on ``grid`` (the model-input volume) into detections; see the module docstring."""
    if not 0.0 < threshold < 1.0:
        raise ValueError("threshold must be between 0 and 1")
    scored = boxes.scores >= threshold
    corners, scores = boxes.corners[scored], boxes.scores[scored]
    if len(scores) == 0:
        return []
    keep = np.asarray(non_max_suppression(corners, scores, nms_iou), dtype=np.int64)
    corners, scores = corners[keep], scores[keep]
    low_ijk, high_ijk = corners[:, 2::-1], corners[:, :2:-1]  # [k, j, i] -> (i, j, k)
    centres = grid.index_to_patient((low_ijk + high_ijk) / 2.0)
    extent_mm = (high_ijk - low_ijk) * np.array(grid.spacing)
    found = [
        Detection(
            center_mm=(float(c[0]), float(c[1]), float(c[2])),
            diameter_mm=float(e.mean()),
            volume_mm3=float(math.pi / 6.0 * np.prod(e)),
            confidence=float(s),
            label=label,
        )
        for c, e, s in zip(centres, extent_mm, scores, strict=True)
        if float(e.mean()) >= min_diameter_mm
    ]
    found.sort(key=lambda d: d.confidence, reverse=True)
    return found
