"""Training data: synthetic phantoms pushed through the shared pre-processing, cached, and sampled as patches.

Every case is made by ``training.phantom.make_phantom`` from its seed, resampled and normalised with
``inference.preprocess`` exactly as at inference time, and stored under the cache folder as a float16
image (memory-mapped when training) plus the nodules and candidate patch centres in voxel units of
the model grid. The label of a patch is the union of the nodules' equivalent spheres.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from inference.preprocess import normalize_hu, resample
from inference.volume import Volume
from training.config import DataConfig, SamplingConfig
from training.nodule_mix import draw_nodules
from training.phantom import NODULE_KINDS, Phantom, make_phantom

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
F32 = npt.NDArray[np.float32]
VALIDATION_SEED_SHIFT = 500_000
_POINTS_PER_KIND = 3000


@dataclass(frozen=True)
class Case:
    """One pre-processed phantom on the model grid (arrays indexed ``[k, j, i]``)."""

    image: npt.NDArray[np.float16]  # normalised intensities in [0, 1]
    centers_kji: F64  # (n, 3) nodule centres, voxel units
    radii_kji: F64  # (n, 3) nodule radii, voxel units along k, j, i
    diameters_mm: F64  # (n,)
    lung_points: I64  # (m, 3) voxels inside the lungs
    vessel_points: I64  # (m, 3) bright voxels inside the lungs that are no nodule (vessels, walls)


def training_phantom(seed: int, cfg: DataConfig) -> Phantom:
    """The phantom of a training or validation seed: acquisition and nodules drawn from ``cfg.phantom``."""
    pc = cfg.phantom
    rng = np.random.default_rng([seed, 7])
    si = float(rng.uniform(*pc.inplane_spacing_mm))
    sk = float(rng.uniform(*pc.slice_spacing_mm))
    n_inplane = round(pc.fov_mm / si)
    shape = (round(pc.z_extent_mm / sk), n_inplane, n_inplane)
    n = int(rng.integers(pc.nodules_per_phantom[0], pc.nodules_per_phantom[1] + 1))
    lo, hi = pc.nodule_diameter_mm
    weights = np.asarray(pc.kind_weights, dtype=np.float64)
    sigma = float(rng.uniform(*pc.noise_sigma_hu))
    while True:
        if pc.size_mix == "lidc":
            diameters, kinds = draw_nodules(rng, n, (lo, hi))
        else:
            diameters = np.exp(rng.uniform(math.log(lo), math.log(hi), size=n)).tolist()
            kinds = [NODULE_KINDS[int(i)] for i in rng.choice(3, size=n, p=weights / weights.sum())]
        try:
            return make_phantom(seed, shape, (si, si, sk), n, diameters, nodule_kinds=kinds,
                                noise_sigma_hu=sigma)
        except RuntimeError:  # the nodules did not fit; draw fewer
            if n <= 1:
                raise
            n -= 1


def preprocess(volume: Volume, cfg: DataConfig) -> tuple[F32, Volume]:
    """The shared pre-processing: resample to the model spacing, then window to [0, 1]."""
    res = resample(volume, cfg.spacing_mm)
    return normalize_hu(res.array, cfg.window_hu), res


def _hu_to_unit(hu: float, window: tuple[float, float]) -> float:
    return (hu - window[0]) / (window[1] - window[0])


def candidate_points(image: F32, window: tuple[float, float], rng: np.random.Generator) -> tuple[I64, I64]:
    """Random voxels inside the lungs, and random bright voxels (vessels, airway walls) inside them.

    The lungs are the dark regions that do not touch the volume's sides (the air outside the
    patient does), found on a 2x subsampled grid.
    """
    sub = image[::2, ::2, ::2]
    dark = sub < _hu_to_unit(-400.0, window)
    labels, _ = ndimage.label(dark)
    # Only the in-plane borders: the trachea may reach the top slice and must not take the lungs along.
    border = np.unique(np.concatenate([
        labels[:, 0].ravel(), labels[:, -1].ravel(), labels[:, :, 0].ravel(), labels[:, :, -1].ravel(),
    ]))
    lungs = dark & ~np.isin(labels, border)
    filled = ndimage.binary_fill_holes(lungs)
    bright = filled & ~lungs & (sub > _hu_to_unit(-300.0, window))

    def pick(mask: npt.NDArray[np.bool_]) -> I64:
        idx = np.argwhere(mask)
        if len(idx) == 0:
            return np.zeros((0, 3), dtype=np.int64)
        chosen = idx[rng.choice(len(idx), size=min(_POINTS_PER_KIND, len(idx)), replace=False)]
        full = chosen * 2 + rng.integers(0, 2, size=chosen.shape)
        return np.minimum(full, np.array(image.shape) - 1).astype(np.int64)

    return pick(lungs), pick(bright)


def prepare_case(seed: int, cfg: DataConfig, cache_dir: Path) -> Path:
    """Generate, pre-process and store the case of ``seed``; return its ``.npz`` path (kept if present)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    meta_path = cache_dir / f"case_{seed}.npz"
    image_path = cache_dir / f"case_{seed}.npy"
    if meta_path.exists() and image_path.exists():
        return meta_path
    phantom = training_phantom(seed, cfg)
    image, grid = preprocess(phantom.volume, cfg)
    spacing_kji = np.array(grid.spacing[::-1])
    centers = np.array([grid.patient_to_index(n.center_mm)[::-1] for n in phantom.nodules]).reshape(-1, 3)
    diameters = np.array([n.diameter_mm for n in phantom.nodules], dtype=np.float64)
    radii = diameters[:, None] / 2.0 / spacing_kji[None, :]
    lung_pts, vessel_pts = candidate_points(image, cfg.window_hu, np.random.default_rng([seed, 11]))
    if len(vessel_pts):
        # Drop "vessel" points that are in fact nodule voxels.
        d = (vessel_pts[:, None, :] - centers[None, :, :]) / np.maximum(radii[None], 1e-6)
        vessel_pts = vessel_pts[np.all(np.sum(d * d, axis=2) > 1.5**2, axis=1)]
    tmp = image_path.with_suffix(".tmp.npy")
    np.save(tmp, image.astype(np.float16))
    np.savez(meta_path.with_suffix(".tmp.npz"), centers_kji=centers, radii_kji=radii, diameters_mm=diameters,
             lung_points=lung_pts, vessel_points=vessel_pts, affine=grid.affine)
    tmp.replace(image_path)
    meta_path.with_suffix(".tmp.npz").replace(meta_path)
    return meta_path


def load_case(meta_path: Path) -> Case:
    """A cached case, its image memory-mapped."""
    meta = np.load(meta_path)
    image = np.load(meta_path.with_suffix(".npy"), mmap_mode="r")
    return Case(image=image, centers_kji=meta["centers_kji"], radii_kji=meta["radii_kji"],
                diameters_mm=meta["diameters_mm"], lung_points=meta["lung_points"],
                vessel_points=meta["vessel_points"])


def build_cache(cfg: DataConfig, cache_dir: Path, seeds: list[int],
                log: Callable[[str], None] = print) -> list[Case]:
    """Prepare (or reuse) the cases of ``seeds`` and load them."""
    cases = []
    for n, seed in enumerate(seeds):
        path = cache_dir / f"case_{seed}.npz"
        if not path.exists():
            log(f"phantom {n + 1}/{len(seeds)} (seed {seed})")
        cases.append(load_case(prepare_case(seed, cfg, cache_dir)))
    return cases


def crop(image: npt.NDArray[np.generic], start_kji: I64, size: tuple[int, int, int]) -> F32:
    """The ``size`` block of ``image`` at ``start_kji`` as float32, zero-padded outside the image."""
    out = np.zeros(size, dtype=np.float32)
    src = []
    dst = []
    for a in range(3):
        lo = int(start_kji[a])
        s0, s1 = max(lo, 0), min(lo + size[a], image.shape[a])
        if s0 >= s1:
            return out
        src.append(slice(s0, s1))
        dst.append(slice(s0 - lo, s1 - lo))
    out[tuple(dst)] = image[tuple(src)]
    return out


def sphere_label(start_kji: I64, size: tuple[int, int, int], centers_kji: F64, radii_kji: F64,
                 values: F64 | None = None) -> F32:
    """For a patch: each nodule's ellipsoid (its equivalent sphere in mm) set to its value (default 1).

    Where nodules overlap the larger value wins; outside every nodule the patch is 0.
    """
    out = np.zeros(size, dtype=np.float32)
    for n, (c, r) in enumerate(zip(centers_kji, radii_kji, strict=True)):
        rel = c - start_kji
        lo = np.maximum(np.floor(rel - r).astype(int), 0)
        hi = np.minimum(np.ceil(rel + r).astype(int) + 1, size)
        if np.any(lo >= hi):
            continue
        kk, jj, ii = (np.arange(lo[a], hi[a], dtype=np.float64) for a in range(3))
        d2 = (((kk - rel[0]) / r[0]) ** 2)[:, None, None] + (((jj - rel[1]) / r[1]) ** 2)[None, :, None] + (
            ((ii - rel[2]) / r[2]) ** 2)[None, None, :]
        block = out[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        value = np.float32(1.0 if values is None else values[n])
        inside = d2 <= 1.0
        block[inside] = np.maximum(block[inside], value)
    return out


def size_weights(diameters_mm: F64, reference_mm: float | None, max_weight: float) -> F64:
    """Per-nodule loss weight ``(reference / diameter)^3`` in [1, max_weight]: small nodules count more.

    Without a reference every nodule weighs 1.
    """
    if reference_mm is None:
        return np.ones_like(diameters_mm)
    return np.clip((reference_mm / np.maximum(diameters_mm, 1e-3)) ** 3, 1.0, max_weight)


class PatchSampler:
    """Draws (image, label) patches: some around nodules, some on vessels, the rest in the lungs."""

    def __init__(self, cases: list[Case], cfg: SamplingConfig, rng: np.random.Generator) -> None:
        if not cases:
            raise ValueError("no cases to sample from")
        self.cases = cases
        self.cfg = cfg
        self.rng = rng
        self.size: tuple[int, int, int] = (int(cfg.patch_size[0]), int(cfg.patch_size[1]), int(cfg.patch_size[2]))
        self.nodules = [(c, n) for c, case in enumerate(cases) for n in range(len(case.diameters_mm))]

    def _centre(self) -> tuple[Case, F64]:
        rng, cfg = self.rng, self.cfg
        u = rng.random()
        half = np.array(self.size, dtype=np.float64) / 2.0
        if u < cfg.nodule_fraction and self.nodules:
            c, n = self.nodules[int(rng.integers(len(self.nodules)))]
            case = self.cases[c]
            slack = np.maximum(half - case.radii_kji[n] - 4.0, 0.0)
            return case, case.centers_kji[n] + rng.uniform(-slack, slack)
        case = self.cases[int(rng.integers(len(self.cases)))]
        points = case.vessel_points if u < cfg.nodule_fraction + cfg.vessel_fraction else case.lung_points
        if len(points) == 0 or rng.random() < 0.1:
            return case, rng.uniform(0, 1, size=3) * np.array(case.image.shape)
        return case, points[int(rng.integers(len(points)))].astype(np.float64)

    def sample(self) -> tuple[F32, F32, F32]:
        """One patch: image, label and per-voxel loss weight, each ``(1, D, H, W)`` float32."""
        case, centre = self._centre()
        start = np.round(centre - np.array(self.size) / 2.0).astype(np.int64)
        image = crop(case.image, start, self.size)
        label = sphere_label(start, self.size, case.centers_kji, case.radii_kji)
        weights = size_weights(case.diameters_mm, self.cfg.small_nodule_reference_mm, self.cfg.small_nodule_max_weight)
        weight = np.maximum(sphere_label(start, self.size, case.centers_kji, case.radii_kji, weights), 1.0)
        if self.cfg.flip:
            for axis in range(3):
                if self.rng.random() < 0.5:
                    image, label, weight = np.flip(image, axis), np.flip(label, axis), np.flip(weight, axis)
        return (np.ascontiguousarray(image)[None], np.ascontiguousarray(label)[None],
                np.ascontiguousarray(weight)[None])

    def batch(self, n: int) -> tuple[F32, F32, F32]:
        """``n`` patches stacked: images, labels, weights, each ``(n, 1, D, H, W)``."""
        samples = [self.sample() for _ in range(n)]
        return (np.stack([p[0] for p in samples]), np.stack([p[1] for p in samples]),
                np.stack([p[2] for p in samples]))
