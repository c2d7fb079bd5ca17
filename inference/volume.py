"""The volume type: voxels in Hounsfield units plus the affine that places them in the patient."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Volume:
    """A 3-D image.

    ``array`` is indexed ``[k, j, i]`` = (slice, row, column). ``affine`` is 4x4 and maps the
    voxel index ``(i, j, k, 1)`` to DICOM patient coordinates (LPS, mm).
    """

    array: FloatArray
    affine: npt.NDArray[np.float64]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size along i (columns), j (rows), k (slices), in mm."""
        cols = np.linalg.norm(self.affine[:3, :3], axis=0)
        return float(cols[0]), float(cols[1]), float(cols[2])

    def index_to_patient(self, ijk: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Map voxel indices ``(..., 3)`` in (i, j, k) order to patient mm."""
        p = np.asarray(ijk, dtype=np.float64)
        return p @ self.affine[:3, :3].T + self.affine[:3, 3]

    def patient_to_index(self, xyz: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Map patient mm ``(..., 3)`` to fractional voxel indices in (i, j, k) order."""
        p = np.asarray(xyz, dtype=np.float64) - self.affine[:3, 3]
        return p @ np.linalg.inv(self.affine[:3, :3]).T
