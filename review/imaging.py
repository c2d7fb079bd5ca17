"""The analysed series for the viewer: its geometry (patient mm <-> pixel) and its slices as raw HU.

Slices go to the browser as little-endian int16 Hounsfield units (rescale applied); the browser
applies window/level itself, so dragging the window never waits for the server. Geometry and
decoded slices are kept in small in-process LRU caches.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom


@dataclass(frozen=True)
class SliceInfo:
    path: Path
    sop_instance_uid: str
    position_mm: np.ndarray  # Image Position (Patient), LPS mm
    normal_mm: float  # position along the slice normal


@dataclass(frozen=True)
class SeriesGeometry:
    """A stack of parallel slices, sorted by position along the normal (feet to head for axial)."""

    series_instance_uid: str
    rows: int
    columns: int
    row_dir: np.ndarray  # direction of increasing column index (IOP[0:3])
    col_dir: np.ndarray  # direction of increasing row index (IOP[3:6])
    normal: np.ndarray
    row_spacing_mm: float  # between rows (PixelSpacing[0])
    col_spacing_mm: float  # between columns (PixelSpacing[1])
    slices: tuple[SliceInfo, ...]
    window: tuple[float, float] | None  # (width, centre) from the first header, if any

    @classmethod
    def from_files(cls, paths: Sequence[Path]) -> SeriesGeometry:
        headers = []
        for p in paths:
            ds = pydicom.dcmread(p, stop_before_pixels=True)
            headers.append((p, ds))
        if not headers:
            raise ValueError("the series has no instances")
        first = headers[0][1]
        iop = [float(v) for v in first.ImageOrientationPatient]
        row_dir = np.asarray(iop[:3]) / np.linalg.norm(iop[:3])
        col_dir = np.asarray(iop[3:]) / np.linalg.norm(iop[3:])
        normal = np.cross(row_dir, col_dir)
        spacing = [float(v) for v in first.PixelSpacing]
        slices = []
        for path, ds in headers:
            ipp = np.asarray([float(v) for v in ds.ImagePositionPatient])
            slices.append(SliceInfo(path, str(ds.SOPInstanceUID), ipp, float(np.dot(normal, ipp))))
        slices.sort(key=lambda s: s.normal_mm)
        window = None
        if first.get("WindowWidth") is not None and first.get("WindowCenter") is not None:
            ww, wc = first.WindowWidth, first.WindowCenter
            window = (float(ww[0] if isinstance(ww, pydicom.multival.MultiValue) else ww),
                      float(wc[0] if isinstance(wc, pydicom.multival.MultiValue) else wc))
        return cls(str(first.SeriesInstanceUID), int(first.Rows), int(first.Columns), row_dir, col_dir, normal,
                   spacing[0], spacing[1], tuple(slices), window)

    @property
    def positions(self) -> np.ndarray:
        return np.asarray([s.normal_mm for s in self.slices])

    def to_pixel(self, point_mm: Sequence[float]) -> tuple[float, float, float]:
        """LPS mm -> (column, row, fractional slice index) in this stack."""
        p = np.asarray(point_mm, dtype=float)
        origin = self.slices[0].position_mm
        col = float(np.dot(p - origin, self.row_dir) / self.col_spacing_mm)
        row = float(np.dot(p - origin, self.col_dir) / self.row_spacing_mm)
        return col, row, self.fractional_index(float(np.dot(self.normal, p)))

    def fractional_index(self, normal_mm: float) -> float:
        """Position along the normal -> fractional slice index (extrapolated beyond the ends)."""
        pos = self.positions
        if len(pos) == 1:
            return 0.0
        if normal_mm < pos[0]:
            return float((normal_mm - pos[0]) / (pos[1] - pos[0]))
        if normal_mm > pos[-1]:
            return float(len(pos) - 1 + (normal_mm - pos[-1]) / (pos[-1] - pos[-2]))
        return float(np.interp(normal_mm, pos, np.arange(len(pos))))

    def to_patient(self, slice_index: int, column: float, row: float) -> tuple[float, float, float]:
        """(slice index, column, row) -> LPS mm (pixel centres at integer indices, PS3.3 C.7.6.2.1.1)."""
        if not 0 <= slice_index < len(self.slices):
            raise ValueError(f"slice {slice_index} is outside the series (0..{len(self.slices) - 1})")
        ipp = self.slices[slice_index].position_mm
        p = ipp + column * self.col_spacing_mm * self.row_dir + row * self.row_spacing_mm * self.col_dir
        return float(p[0]), float(p[1]), float(p[2])

    def to_json(self) -> dict[str, object]:
        return {
            "series_instance_uid": self.series_instance_uid,
            "rows": self.rows, "columns": self.columns,
            "row_spacing_mm": self.row_spacing_mm, "col_spacing_mm": self.col_spacing_mm,
            "slice_positions_mm": [round(s.normal_mm, 4) for s in self.slices],
            "count": len(self.slices),
            "window": list(self.window) if self.window else None,
        }


def read_hu_slice(path: Path) -> bytes:
    """One slice as little-endian int16 HU (rescale slope/intercept applied, clipped to int16)."""
    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    if slope == 1.0 and float(intercept).is_integer():
        hu = pixels.astype(np.int32) + int(intercept)
    else:
        hu = np.rint(pixels.astype(np.float32) * slope + intercept)
    return np.clip(hu, -32768, 32767).astype("<i2").tobytes()


class SeriesCache:
    """LRU caches: geometry per series, decoded slices within a byte budget. Thread-safe."""

    def __init__(self, slice_budget_bytes: int = 256 * 2**20, max_series: int = 16) -> None:
        self._lock = threading.Lock()
        self._geometry: OrderedDict[tuple[str, tuple[str, ...]], SeriesGeometry] = OrderedDict()
        self._by_analysis: OrderedDict[int, SeriesGeometry] = OrderedDict()
        self._slices: OrderedDict[Path, bytes] = OrderedDict()
        self._bytes = 0
        self._budget = slice_budget_bytes
        self._max_series = max_series

    def for_analysis(self, analysis_id: int) -> SeriesGeometry | None:
        with self._lock:
            return self._by_analysis.get(analysis_id)

    def geometry(self, series_uid: str, paths: Sequence[Path], *, analysis_id: int | None = None) -> SeriesGeometry:
        found = self._geometry_for(series_uid, paths)
        if analysis_id is not None:
            with self._lock:
                self._by_analysis[analysis_id] = found
                while len(self._by_analysis) > self._max_series:
                    self._by_analysis.popitem(last=False)
        return found

    def _geometry_for(self, series_uid: str, paths: Sequence[Path]) -> SeriesGeometry:
        key = (series_uid, tuple(sorted(str(p) for p in paths)))
        with self._lock:
            found = self._geometry.get(key)
            if found is not None:
                self._geometry.move_to_end(key)
                return found
        geometry = SeriesGeometry.from_files(paths)
        with self._lock:
            self._geometry[key] = geometry
            while len(self._geometry) > self._max_series:
                self._geometry.popitem(last=False)
        return geometry

    def slice_bytes(self, path: Path) -> bytes:
        with self._lock:
            found = self._slices.get(path)
            if found is not None:
                self._slices.move_to_end(path)
                return found
        data = read_hu_slice(path)
        with self._lock:
            if path not in self._slices:
                self._slices[path] = data
                self._bytes += len(data)
            while self._bytes > self._budget and self._slices:
                _, old = self._slices.popitem(last=False)
                self._bytes -= len(old)
        return data
