"""The phantom generator: determinism, geometry, nodules where the ground truth says."""

from __future__ import annotations

import time

import numpy as np
import pytest

from training.phantom import NODULE_KINDS, Phantom, make_phantom

SMALL = {"shape_kji": (100, 200, 200), "spacing_ijk": (1.6, 1.6, 2.0)}


def _hu(phantom: Phantom, xyz: tuple[float, float, float], radius_vox: int = 1) -> float:
    i, j, k = np.round(phantom.volume.patient_to_index(xyz)).astype(int)
    r = radius_vox
    return float(np.median(phantom.volume.array[k - r:k + r + 1, j - r:j + r + 1, i - r:i + r + 1]))


def test_same_seed_same_phantom() -> None:
    a = make_phantom(7, **SMALL)
    b = make_phantom(7, **SMALL)
    assert np.array_equal(a.volume.array, b.volume.array)
    assert np.array_equal(a.volume.affine, b.volume.affine)
    assert a.nodules == b.nodules
    c = make_phantom(8, **SMALL)
    assert not np.array_equal(a.volume.array, c.volume.array)


def test_default_phantom_is_a_chest_ct_and_fast() -> None:
    t0 = time.monotonic()
    p = make_phantom(0)
    elapsed = time.monotonic() - t0
    vol = p.volume
    assert vol.array.shape == (300, 512, 512)
    assert vol.array.dtype == np.float32
    assert vol.spacing == pytest.approx((0.7, 0.7, 1.25))
    # Axial, identity direction cosines, centred on (0, 0, z0).
    assert np.allclose(vol.affine[:3, :3], np.diag([0.7, 0.7, 1.25]))
    centre = vol.index_to_patient(np.array([511, 511, 299]) / 2.0)
    assert centre[0] == pytest.approx(0.0) and centre[1] == pytest.approx(0.0)
    assert abs(float(np.median(vol.array[:, :20, :20])) + 1000.0) < 30.0  # air in the corner
    assert len(p.nodules) == 3
    assert all(5.0 <= n.diameter_mm <= 25.0 and n.kind in NODULE_KINDS for n in p.nodules)
    noise = float(np.std(vol.array[150, 5:40, 5:40]))
    assert 15.0 < noise < 45.0
    assert elapsed < 20.0  # a few seconds on an idle machine; generous for a shared CI runner


@pytest.mark.parametrize("seed", [1, 2])
def test_nodules_sit_in_the_lungs_with_the_hu_of_their_kind(seed: int) -> None:
    kinds = ["solid", "part-solid", "ground-glass", "solid"]
    p = make_phantom(seed, n_nodules=4, nodule_diameters_mm=[14.0, 16.0, 14.0, 8.0], nodule_kinds=kinds,
                     **SMALL)
    assert [n.kind for n in p.nodules] == kinds
    for n in p.nodules:
        centre = _hu(p, n.center_mm)
        if n.kind in ("solid", "part-solid"):
            assert -150.0 < centre < 150.0, (n, centre)
        else:
            assert -750.0 < centre < -430.0, (n, centre)
        # Lung tissue around it: a good part of a shell at 1.6 radii is lung (~ -850 HU).
        r = 0.8 * n.diameter_mm
        dirs = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1],
                         [1, 1, 0], [-1, -1, 0], [1, -1, 0], [-1, 1, 0]], dtype=float)
        dirs /= np.linalg.norm(dirs, axis=1)[:, None]
        shell = [_hu(p, tuple(np.array(n.center_mm) + r * d)) for d in dirs]
        assert sum(h < -700.0 for h in shell) >= 3, (n, shell)


def test_part_solid_has_a_ground_glass_halo() -> None:
    p = make_phantom(3, n_nodules=1, nodule_diameters_mm=[24.0], nodule_kinds=["part-solid"], **SMALL)
    n = p.nodules[0]
    centre = np.array(n.center_mm)
    # Between the solid core (at most 0.6 radii) and the rim: ground glass along some direction.
    halo = [_hu(p, tuple(centre + 0.8 * 12.0 * d), 0) for d in np.eye(3)] + [
        _hu(p, tuple(centre - 0.8 * 12.0 * d), 0) for d in np.eye(3)]
    assert any(-750.0 < h < -400.0 for h in halo), halo


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        make_phantom(0, n_nodules=2, nodule_diameters_mm=[5.0], **SMALL)
    with pytest.raises(ValueError):
        make_phantom(0, n_nodules=1, nodule_kinds=["calcified"], **SMALL)
