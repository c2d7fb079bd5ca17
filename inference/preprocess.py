"""Pre-processing shared by training and inference, so the two cannot drift.

A model's input is the HU volume resampled to the model's voxel spacing and mapped to [0, 1]
through the model's intensity window; for models trained on MONAI's RAS layout, the volume is
first turned to RAS (``to_ras``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from inference.volume import FloatArray, Volume


def normalize_hu(array: FloatArray, window: tuple[float, float]) -> FloatArray:
    """Clip to ``window`` (low, high HU) and scale to [0, 1] as float32."""
    low, high = window
    out = np.clip(array, low, high, dtype=np.float32) if array.dtype == np.float32 else np.clip(
        array.astype(np.float32), low, high
    )
    out -= np.float32(low)
    out *= np.float32(1.0 / (high - low))
    return out


def resample(volume: Volume, spacing: tuple[float, float, float]) -> Volume:
    """Resample to ``spacing`` (mm along i, j, k) with trilinear interpolation.

    The direction cosines and the physical extent are kept; the first voxel centre moves by half
    the change in voxel size so that the volume covers the same region of the patient.
    """
    old = np.array(volume.spacing)
    new = np.array(spacing, dtype=np.float64)
    shape_ijk = np.array(volume.array.shape[::-1])
    out_ijk = np.maximum(1, np.round(shape_ijk * old / new)).astype(int)
    if np.array_equal(out_ijk, shape_ijk) and np.allclose(old, new):
        return volume
    tensor = torch.from_numpy(np.ascontiguousarray(volume.array, dtype=np.float32))[None, None]
    with torch.inference_mode():
        res = F.interpolate(tensor, size=tuple(int(v) for v in out_ijk[::-1]), mode="trilinear",
                            align_corners=False)
    actual = old * shape_ijk / out_ijk  # exact spacing after rounding the shape
    direction = volume.affine[:3, :3] / old
    affine = np.eye(4)
    affine[:3, :3] = direction * actual
    # Voxel centres of the new grid sit at (n + 0.5) * actual - 0.5 * old in old-voxel mm units.
    shift_index = (0.5 * actual - 0.5 * old) / old
    affine[:3, 3] = volume.index_to_patient(shift_index)
    return Volume(array=res[0, 0].numpy(), affine=affine)


# RAS in DICOM's LPS patient coordinates: +x points left, +y posterior, +z superior.
_RAS_SIGN_IN_LPS = np.array([-1.0, -1.0, 1.0])


def to_ras(volume: Volume) -> Volume:
    """The same voxels with i toward the patient's right, j anterior, k superior (no interpolation).

    Axes are flipped and permuted only, as MONAI's ``Orientationd(axcodes="RAS")`` does, and the
    affine follows them, so every voxel keeps its place in the patient. Raises ``ValueError`` when
    the axes are too oblique to name (two voxel axes closest to the same patient axis).
    """
    direction = volume.affine[:3, :3]
    patient_axis = np.argmax(np.abs(direction), axis=0)  # per voxel axis i, j, k
    if sorted(patient_axis.tolist()) != [0, 1, 2]:
        raise ValueError("the volume's axes are too oblique to turn to RAS")
    array = volume.array
    origin = volume.affine[:3, 3].copy()
    columns = direction.copy()
    for axis in range(3):
        if np.sign(direction[patient_axis[axis], axis]) != _RAS_SIGN_IN_LPS[patient_axis[axis]]:
            array = np.flip(array, axis=2 - axis)  # array axes are [k, j, i]
            origin += (volume.array.shape[2 - axis] - 1) * direction[:, axis]
            columns[:, axis] = -direction[:, axis]
    order = np.argsort(patient_axis)  # the old voxel axis that becomes new axis i, j, k
    affine = np.eye(4)
    affine[:3, :3] = columns[:, order]
    affine[:3, 3] = origin
    array = np.transpose(array, [2 - int(order[2 - m]) for m in range(3)])
    return Volume(array=np.ascontiguousarray(array), affine=affine)
