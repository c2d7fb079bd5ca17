"""Series -> volume: geometry from positions and orientation, and every way a series can be bad."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from factory_dicom import AXIAL, normal_of, patient_point, stack_positions, write_slices, write_volume
from pydicom.dataset import Dataset
from pydicom.uid import UID, JPEG2000Lossless, JPEGLSLossless, RLELossless

from inference.dicom_series import SeriesError, load_series, read_instances, series_sha256

ROWS, COLUMNS = 12, 10  # non-square, so a transposed volume cannot pass


def _planes(count: int, seed: int = 0) -> np.ndarray:
    """Distinct HU planes: every voxel unique enough to find it again."""
    rng = np.random.default_rng(seed)
    return rng.integers(-1000, 1500, size=(count, ROWS, COLUMNS)).astype(np.float64)


def _check_geometry(
    paths: list[Path],
    positions: list[np.ndarray],
    planes: np.ndarray,
    orientation: tuple[float, ...],
    pixel_spacing: tuple[float, float],
) -> None:
    volume = load_series(paths)
    assert volume.array.dtype == np.float32
    assert volume.array.shape == (len(positions), ROWS, COLUMNS)
    normal = normal_of(orientation)
    along = [float(p @ normal) for p in positions]
    order = np.argsort(along)
    for k, n in enumerate(order):
        # The k-th slice of the volume is the n-th written slice, with its HU values...
        np.testing.assert_allclose(volume.array[k], planes[n], atol=1e-3)
        # ...and every pixel of it maps where the DICOM equation puts it.
        for r, c in [(0, 0), (ROWS - 1, 0), (0, COLUMNS - 1), (5, 7)]:
            expected = patient_point(positions[n], orientation, pixel_spacing, r, c)
            np.testing.assert_allclose(volume.index_to_patient([c, r, k]), expected, atol=1e-6)


@pytest.mark.parametrize(
    ("orientation", "step", "reverse_files"),
    [
        pytest.param(AXIAL, 1.5, False, id="head-first"),
        pytest.param(AXIAL, 1.5, True, id="files-in-decreasing-z"),
        pytest.param((-1.0, 0.0, 0.0, 0.0, 1.0, 0.0), 1.5, False, id="feet-first-decreasing-z"),
        pytest.param((0.0, 1.0, 0.0, 0.0, 0.0, -1.0), 2.0, False, id="sagittal"),
        pytest.param(
            (np.cos(0.5), np.sin(0.5), 0.0, -np.sin(0.5) * np.cos(0.3), np.cos(0.5) * np.cos(0.3), np.sin(0.3)),
            1.0,
            False,
            id="oblique-stacked-along-normal",
        ),
    ],
)
def test_affine_follows_positions_and_orientation(
    tmp_path: Path, orientation: tuple[float, ...], step: float, reverse_files: bool
) -> None:
    count = 7
    origin = (-120.5, 33.25, -402.0)
    pixel_spacing = (0.8, 0.6)  # row spacing (along j), column spacing (along i)
    positions = stack_positions(origin, orientation, step, count)
    if reverse_files:
        positions = positions[::-1]
    planes = _planes(count)
    paths = write_slices(
        tmp_path,
        list(zip(positions, planes, strict=True)),
        orientation=orientation,
        pixel_spacing=pixel_spacing,
        slope=0.5,
        intercept=-1000.0,
        shuffle_seed=3,
    )
    _check_geometry(paths, positions, planes, orientation, pixel_spacing)


def test_spacing_comes_from_positions_not_slice_thickness(tmp_path: Path) -> None:
    hu = np.zeros((5, ROWS, COLUMNS))
    paths = write_volume(tmp_path, hu, origin=(0, 0, 10), spacing_ijk=(0.6, 0.8, 2.5), slice_thickness=5.0)
    volume = load_series(paths)
    np.testing.assert_allclose(volume.spacing, (0.6, 0.8, 2.5))
    np.testing.assert_allclose(volume.affine[:3, 3], (0, 0, 10))


def test_rescale_slope_and_intercept_can_differ_per_slice(tmp_path: Path) -> None:
    planes = _planes(4)

    def edit(n: int, ds: Dataset) -> None:
        if n == 2:  # store the same HU with another rescale
            stored = np.round((planes[n] + 2048.0) / 2.0).astype("<i2")
            ds.RescaleSlope, ds.RescaleIntercept = "2", "-2048"
            ds.PixelData = stored.tobytes()

    positions = stack_positions((0, 0, 0), AXIAL, 1.0, 4)
    paths = write_slices(tmp_path, list(zip(positions, planes, strict=True)), edit=edit, shuffle_seed=None)
    volume = load_series(paths)
    np.testing.assert_allclose(volume.array[2], planes[2], atol=1.0)
    np.testing.assert_allclose(volume.array[1], planes[1], atol=1e-3)


def test_series_sha256_ignores_file_names_and_order(tmp_path: Path) -> None:
    hu = _planes(4)
    paths = write_volume(tmp_path, hu)
    a = series_sha256(read_instances(paths))
    b = series_sha256(read_instances(paths[::-1]))
    assert a == b and len(a) == 64


# -- bad series -----------------------------------------------------------------------------------


def _axial(tmp_path: Path, count: int = 6, **kwargs: object) -> list[Path]:
    positions = stack_positions((0, 0, 0), AXIAL, 1.25, count)
    return write_slices(tmp_path, list(zip(positions, _planes(count), strict=True)), **kwargs)  # type: ignore[arg-type]


def _edit_slice(index: int, **attrs: object) -> object:
    def edit(n: int, ds: Dataset) -> None:
        if n == index:
            for key, value in attrs.items():
                if value is None:
                    delattr(ds, key)
                else:
                    setattr(ds, key, value)

    return edit


def test_gantry_tilt_is_refused(tmp_path: Path) -> None:
    tilt = np.radians(15)
    orientation = (1.0, 0.0, 0.0, 0.0, float(np.cos(tilt)), float(np.sin(tilt)))
    # A tilted gantry: the image planes are tilted but the table moves straight along z.
    positions = [np.array([0.0, 0.0, 1.25 * k]) for k in range(6)]
    paths = write_slices(tmp_path, list(zip(positions, _planes(6), strict=True)), orientation=orientation)
    with pytest.raises(SeriesError, match="not stacked along their normal"):
        load_series(paths)


def test_missing_slice_is_refused(tmp_path: Path) -> None:
    paths = _axial(tmp_path, count=8, shuffle_seed=None)
    with pytest.raises(SeriesError, match="slice spacing is uneven"):
        load_series(paths[:3] + paths[4:])


def test_duplicate_positions_are_refused(tmp_path: Path) -> None:
    positions = [np.array([0.0, 0.0, z]) for z in (0.0, 1.25, 2.5, 2.5, 3.75)]
    paths = write_slices(tmp_path, list(zip(positions, _planes(5), strict=True)))
    with pytest.raises(SeriesError, match=r"share the position 2\.50 mm"):
        load_series(paths)


def test_mixed_sizes_are_refused(tmp_path: Path) -> None:
    positions = stack_positions((0, 0, 0), AXIAL, 1.0, 4)
    planes = [np.zeros((ROWS, COLUMNS))] * 3 + [np.zeros((ROWS, COLUMNS + 2))]
    paths = write_slices(tmp_path, list(zip(positions, planes, strict=True)), shuffle_seed=None)
    with pytest.raises(SeriesError, match=r"different sizes \(12x10 and 12x12"):
        load_series(paths)


def test_mixed_pixel_spacing_is_refused(tmp_path: Path) -> None:
    paths = _axial(tmp_path, edit=_edit_slice(3, PixelSpacing=["0.9", "0.9"]))
    with pytest.raises(SeriesError, match="different pixel spacings"):
        load_series(paths)


def test_mixed_orientation_is_refused(tmp_path: Path) -> None:
    paths = _axial(tmp_path, edit=_edit_slice(2, ImageOrientationPatient=["1", "0", "0", "0", "0", "-1"]))
    with pytest.raises(SeriesError, match="different orientations"):
        load_series(paths)


def test_too_few_slices_are_refused(tmp_path: Path) -> None:
    paths = _axial(tmp_path, count=2)
    with pytest.raises(SeriesError, match="has 2 slices; at least 3 are needed"):
        load_series(paths)
    with pytest.raises(SeriesError, match="has 2 slices; at least 20 are needed"):
        load_series(paths, min_slices=20)


@pytest.mark.parametrize("keyword", ["ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"])
def test_missing_geometry_is_refused(tmp_path: Path, keyword: str) -> None:
    paths = _axial(tmp_path, edit=_edit_slice(4, **{keyword: None}), shuffle_seed=None)
    with pytest.raises(SeriesError, match=rf"IM00004\.dcm has no {keyword}"):
        load_series(paths)


def test_non_orthonormal_orientation_is_refused(tmp_path: Path) -> None:
    bad = ["1", "0", "0", "0.5", "0.5", "0"]
    paths = _axial(tmp_path, edit=lambda n, ds: setattr(ds, "ImageOrientationPatient", bad))
    with pytest.raises(SeriesError, match="not two perpendicular unit vectors"):
        load_series(paths)


def test_two_series_are_refused(tmp_path: Path) -> None:
    a = _axial(tmp_path / "a")
    b = _axial(tmp_path / "b")
    with pytest.raises(SeriesError, match="belong to 2 different series"):
        load_series(a + b)


def test_non_dicom_file_is_refused(tmp_path: Path) -> None:
    paths = _axial(tmp_path)
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all")
    with pytest.raises(SeriesError, match=r"junk.dcm is not a readable DICOM file"):
        load_series([*paths, junk])


def test_missing_pixel_data_is_refused(tmp_path: Path) -> None:
    paths = _axial(tmp_path, edit=_edit_slice(1, PixelData=None), shuffle_seed=None)
    with pytest.raises(SeriesError, match=r"IM00001\.dcm has no pixel data"):
        load_series(paths)


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless], ids=lambda u: u.name)
def test_compressed_series_decode_to_the_same_volume(tmp_path: Path, syntax: UID) -> None:
    planes = np.random.default_rng(5).integers(-1024, 2000, size=(4, 64, 48)).astype(np.float64)
    positions = stack_positions((0, 0, 0), AXIAL, 1.0, 4)

    def compress(n: int, ds: Dataset) -> None:
        try:
            ds.compress(syntax)
        except (RuntimeError, NotImplementedError) as exc:
            pytest.skip(f"no encoder for {syntax.name} here: {exc}")

    plain = load_series(write_slices(tmp_path / "plain", list(zip(positions, planes, strict=True))))
    packed = load_series(write_slices(tmp_path / "packed", list(zip(positions, planes, strict=True)), edit=compress))
    np.testing.assert_array_equal(packed.array, plain.array)
