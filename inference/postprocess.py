"""Model output -> findings: sigmoid, threshold, connected components, measurements in patient mm."""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from scipy import ndimage
from scipy.special import expit

from inference.volume import FloatArray, Volume
from tamsoat.core.domain import Detection

# 26-connectivity: voxels touching by a face, an edge or a corner belong to the same finding.
_STRUCTURE = np.ones((3, 3, 3), dtype=bool)


def equivalent_diameter_mm(volume_mm3: float) -> float:
    """Diameter of the sphere with this volume."""
    return float((6.0 * volume_mm3 / math.pi) ** (1.0 / 3.0))


def detections_from_output(
    output: FloatArray,
    grid: Volume,
    threshold: float,
    min_diameter_mm: float = 0.0,
    kind: Literal["logits", "probabilities"] = "logits",
    label: str = "nodule",
) -> list[Detection]:
    """Turn a ``(D, H, W)`` model output on ``grid`` (the resampled volume) into detections.

    Voxels whose probability is at least ``threshold`` are grouped into 26-connected components.
    Per component: the centre is the probability-weighted centroid, mapped to patient mm through
    ``grid.affine``; the volume is the voxel count times the voxel volume; the diameter is the
    equivalent-sphere diameter; the confidence is the highest probability. Components smaller
    than ``min_diameter_mm`` are dropped. The result is sorted by confidence, highest first.
    """
    if output.shape != grid.array.shape:
        raise ValueError(f"model output {output.shape} does not match the volume {grid.array.shape}")
    if not 0.0 < threshold < 1.0:
        raise ValueError("threshold must be between 0 and 1")
    if kind == "logits":
        # sigmoid(x) >= t  <=>  x >= logit(t): threshold before computing any probability.
        mask = output >= np.float32(math.log(threshold / (1.0 - threshold)))
    else:
        mask = output >= np.float32(threshold)
    labels, count = ndimage.label(mask, structure=_STRUCTURE)
    if count == 0:
        return []
    # Everything below touches only the voxels above threshold, all components at once.
    kji = np.nonzero(mask)
    component = labels[kji]
    del labels, mask
    values = output[kji].astype(np.float64)
    prob = expit(values) if kind == "logits" else values
    bins = count + 1
    weight = np.bincount(component, weights=prob, minlength=bins)
    centroid_kji = np.stack(
        [np.bincount(component, weights=prob * axis, minlength=bins) for axis in kji], axis=1
    ) / np.maximum(weight, np.finfo(np.float64).tiny)[:, None]
    voxels = np.bincount(component, minlength=bins)
    peak = np.zeros(bins, dtype=np.float64)
    np.maximum.at(peak, component, prob)
    voxel_mm3 = float(abs(np.linalg.det(grid.affine[:3, :3])))
    centres = grid.index_to_patient(centroid_kji[:, ::-1])
    found: list[Detection] = []
    for n in range(1, bins):
        volume_mm3 = float(voxels[n]) * voxel_mm3
        diameter = equivalent_diameter_mm(volume_mm3)
        if diameter < min_diameter_mm:
            continue
        found.append(
            Detection(
                center_mm=(float(centres[n, 0]), float(centres[n, 1]), float(centres[n, 2])),
                diameter_mm=diameter,
                volume_mm3=volume_mm3,
                confidence=float(peak[n]),
                label=label,
            )
        )
    found.sort(key=lambda d: d.confidence, reverse=True)
    return found
