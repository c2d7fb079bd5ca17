"""A DICOM series of single-frame slices -> a ``Volume`` in HU with its patient-space affine.

The slices are ordered along the slice normal (row cosine x column cosine) by their
ImagePositionPatient; the slice spacing comes from those positions, never from SliceThickness.
Anything that would give a wrong volume (tilted or oblique stacking, missing or duplicate slices,
mixed geometry) raises ``SeriesError`` with a one-sentence reason instead.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import pixel_array

from inference.volume import Volume

MIN_SLICES = 3
_CHUNK = 1 << 20
ORIENTATION_TOLERANCE = 1e-3  # direction cosines, unitless
SPACING_TOLERANCE_MM = 1e-3  # pixel spacing equality
DUPLICATE_TOLERANCE_MM = 1e-2  # two slices closer than this along the normal are the same position
GAP_TOLERANCE = 0.1  # a gap may differ from the mean slice spacing by this fraction of it
DRIFT_TOLERANCE = 0.5  # in-plane drift of the stack, as a fraction of the smallest pixel spacing

Float64Array = npt.NDArray[np.float64]


class SeriesError(ValueError):
    """The instances do not form one volume that can be analysed; the message says why."""


@dataclass(frozen=True)
class Instance:
    """One file of a series: its path, its parsed dataset (pixel data still encoded) and its sha256."""

    path: Path
    dataset: Dataset
    sha256: str


@dataclass(frozen=True)
class StackGeometry:
    """Where the slices of a series sit: ``order[k]`` is the index of the k-th slice along the normal."""

    order: tuple[int, ...]
    affine: Float64Array
    rows: int
    columns: int
    slice_spacing_mm: float

    @property
    def shape(self) -> tuple[int, int, int]:
        """The volume shape (k, j, i)."""
        return len(self.order), self.rows, self.columns


def _name(header: Dataset, n: int) -> str:
    filename = getattr(header, "filename", None)
    if isinstance(filename, str | Path) and str(filename):
        return Path(filename).name
    sop = header.get("SOPInstanceUID")
    return f"instance {sop}" if sop else f"instance #{n + 1}"


def _floats(header: Dataset, keyword: str, count: int, n: int) -> Float64Array:
    value = header.get(keyword)
    if value is None or value == "":
        raise SeriesError(f"{_name(header, n)} has no {keyword}, so its position cannot be known")
    try:
        values = np.array([float(v) for v in (value if isinstance(value, Sequence) else [value])])
    except (TypeError, ValueError) as exc:
        raise SeriesError(f"{_name(header, n)} has an unreadable {keyword} {value!r}") from exc
    if values.shape != (count,) or not np.all(np.isfinite(values)):
        raise SeriesError(f"{_name(header, n)} has {keyword} {value!r} instead of {count} numbers")
    return values


def _fmt(values: Float64Array) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"


def _int(header: Dataset, keyword: str, n: int) -> int:
    value = header.get(keyword)
    if value is None or value == "":
        raise SeriesError(f"{_name(header, n)} has no {keyword}")
    return int(value)


def stack_geometry(headers: Sequence[Dataset], min_slices: int = MIN_SLICES) -> StackGeometry:
    """Check the geometry of a stack of single-frame slices and order them along the normal.

    Works on headers alone (read with ``stop_before_pixels=True`` is enough).
    """
    if len(headers) < min_slices:
        raise SeriesError(f"the series has {len(headers)} slices; at least {min_slices} are needed")
    uids = {str(h.get("SeriesInstanceUID", "")) for h in headers}
    if len(uids) > 1:
        raise SeriesError(f"the instances belong to {len(uids)} different series")
    for n, h in enumerate(headers):
        if int(h.get("NumberOfFrames", 1) or 1) > 1:
            raise SeriesError(f"{_name(h, n)} is a multi-frame image, which is not supported")
        if int(h.get("SamplesPerPixel", 1) or 1) != 1:
            raise SeriesError(f"{_name(h, n)} is not a greyscale image (SamplesPerPixel is not 1)")

    first = headers[0]
    iop0 = _floats(first, "ImageOrientationPatient", 6, 0)
    spacing0 = _floats(first, "PixelSpacing", 2, 0)
    size0 = (_int(first, "Rows", 0), _int(first, "Columns", 0))
    positions = np.empty((len(headers), 3), dtype=np.float64)
    for n, h in enumerate(headers):
        iop = _floats(h, "ImageOrientationPatient", 6, n)
        if np.max(np.abs(iop - iop0)) > ORIENTATION_TOLERANCE:
            raise SeriesError(
                f"the slices have different orientations (ImageOrientationPatient {_fmt(iop0)} "
                f"and {_fmt(iop)} in {_name(h, n)})"
            )
        size = (_int(h, "Rows", n), _int(h, "Columns", n))
        if size != size0:
            raise SeriesError(
                f"the slices have different sizes ({size0[0]}x{size0[1]} and {size[0]}x{size[1]} "
                f"rows x columns in {_name(h, n)})"
            )
        spacing = _floats(h, "PixelSpacing", 2, n)
        if np.max(np.abs(spacing - spacing0)) > SPACING_TOLERANCE_MM:
            raise SeriesError(
                f"the slices have different pixel spacings ({_fmt(spacing0)} and {_fmt(spacing)} mm "
                f"in {_name(h, n)})"
            )
        positions[n] = _floats(h, "ImagePositionPatient", 3, n)
    if np.any(spacing0 <= 0):
        raise SeriesError(f"PixelSpacing {_fmt(spacing0)} must be positive")

    row_cos, col_cos = iop0[:3], iop0[3:]
    if (
        abs(np.linalg.norm(row_cos) - 1) > 1e-2
        or abs(np.linalg.norm(col_cos) - 1) > 1e-2
        or abs(float(row_cos @ col_cos)) > 1e-2
    ):
        raise SeriesError(f"ImageOrientationPatient {_fmt(iop0)} is not two perpendicular unit vectors")
    row_cos = row_cos / np.linalg.norm(row_cos)
    col_cos = col_cos - (col_cos @ row_cos) * row_cos
    col_cos = col_cos / np.linalg.norm(col_cos)
    normal = np.cross(row_cos, col_cos)

    along = positions @ normal
    order = np.argsort(along, kind="stable")
    along = along[order]
    gaps = np.diff(along)
    if np.min(gaps) < DUPLICATE_TOLERANCE_MM:
        k = int(np.argmin(gaps))
        raise SeriesError(
            f"two slices share the position {along[k]:.2f} mm along the slice normal "
            f"({_name(headers[order[k]], int(order[k]))} and {_name(headers[order[k + 1]], int(order[k + 1]))})"
        )
    step = float((along[-1] - along[0]) / (len(along) - 1))
    if np.max(np.abs(gaps - step)) > GAP_TOLERANCE * step:
        raise SeriesError(
            f"the slice spacing is uneven ({np.min(gaps):.3f} to {np.max(gaps):.3f} mm), so slices are "
            "missing or the series mixes acquisitions"
        )
    offsets = positions[order] - positions[order[0]]
    in_plane = offsets - np.outer(offsets @ normal, normal)
    drift = float(np.max(np.linalg.norm(in_plane, axis=1)))
    if drift > DRIFT_TOLERANCE * float(np.min(spacing0)):
        raise SeriesError(
            f"the slices are not stacked along their normal (drifting {drift:.2f} mm in-plane), as with "
            "gantry tilt or oblique stacking"
        )

    affine = np.eye(4)
    affine[:3, 0] = row_cos * spacing0[1]  # i: along a row, column spacing
    affine[:3, 1] = col_cos * spacing0[0]  # j: down a column, row spacing
    affine[:3, 2] = normal * step
    affine[:3, 3] = positions[order[0]]
    return StackGeometry(
        order=tuple(int(k) for k in order),
        affine=affine,
        rows=size0[0],
        columns=size0[1],
        slice_spacing_mm=step,
    )


def read_instance(path: Path) -> Instance:
    """Read one file: hash its bytes and parse it (pixel data stays encoded until it is needed)."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
            f.seek(0)
            try:
                ds = pydicom.dcmread(f)
            except (InvalidDicomError, EOFError, ValueError) as exc:
                raise SeriesError(f"{path.name} is not a readable DICOM file: {exc}") from exc
    except OSError as exc:
        raise SeriesError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return Instance(path=path, dataset=ds, sha256=digest.hexdigest())


def read_headers(paths: Sequence[Path]) -> list[Dataset]:
    """The headers of a series' files, without pixel data (enough for routing and geometry)."""
    headers: list[Dataset] = []
    for path in paths:
        try:
            headers.append(pydicom.dcmread(path, stop_before_pixels=True))
        except (InvalidDicomError, EOFError, ValueError) as exc:
            raise SeriesError(f"{Path(path).name} is not a readable DICOM file: {exc}") from exc
        except OSError as exc:
            raise SeriesError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return headers


def read_instances(paths: Sequence[Path]) -> list[Instance]:
    """Read the files of one series."""
    return [read_instance(Path(p)) for p in paths]


def _rescale(ds: Dataset, n: int) -> tuple[float, float]:
    if "ModalityLUTSequence" in ds and "RescaleSlope" not in ds:
        raise SeriesError(f"{_name(ds, n)} uses a Modality LUT Sequence, which is not supported")
    try:
        slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
        intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    except (TypeError, ValueError) as exc:
        raise SeriesError(f"{_name(ds, n)} has an unreadable RescaleSlope or RescaleIntercept") from exc
    return slope, intercept


def build_volume(
    instances: Sequence[Instance], min_slices: int = MIN_SLICES, geometry: StackGeometry | None = None
) -> Volume:
    """Check the geometry (unless ``geometry`` of these instances is given), then decode every
    slice into one preallocated float32 HU array."""
    headers = [inst.dataset for inst in instances]
    if geometry is None:
        geometry = stack_geometry(headers, min_slices)
    array = np.empty(geometry.shape, dtype=np.float32)
    for k, n in enumerate(geometry.order):
        ds = headers[n]
        if "PixelData" not in ds:
            raise SeriesError(f"{_name(ds, n)} has no pixel data")
        try:
            pixels = pixel_array(ds)
        except NotImplementedError as exc:
            raise SeriesError(
                f"{_name(ds, n)} uses transfer syntax {ds.file_meta.get('TransferSyntaxUID', '?')} "
                "that no installed decoder supports"
            ) from exc
        except Exception as exc:  # decoder plugins raise their own exception types
            raise SeriesError(f"the pixel data of {_name(ds, n)} cannot be decoded: {exc}") from exc
        if pixels.shape != geometry.shape[1:]:
            raise SeriesError(f"{_name(ds, n)} decodes to {pixels.shape}, not {geometry.shape[1:]}")
        slope, intercept = _rescale(ds, n)
        plane = array[k]
        if slope == 1.0:
            plane[...] = pixels
        else:
            np.multiply(pixels, np.float32(slope), out=plane, casting="unsafe")
        if intercept != 0.0:
            plane += np.float32(intercept)
    return Volume(array=array, affine=geometry.affine)


def load_series(paths: Sequence[Path], min_slices: int = MIN_SLICES) -> Volume:
    """Read the files of one series into a ``Volume`` (HU, ``[k, j, i]``, LPS affine)."""
    return build_volume(read_instances(paths), min_slices)


def series_sha256(instances: Sequence[Instance]) -> str:
    """A digest of the series content that does not depend on file names or order.

    sha256 over the sorted hex sha256 digests of the instance files, one per line.
    """
    digest = hashlib.sha256()
    for h in sorted(inst.sha256 for inst in instances):
        digest.update(h.encode("ascii") + b"\n")
    return digest.hexdigest()
