"""Synthetic low-dose chest-CT phantoms with lung nodules, deterministic by seed.

The phantom is an axial CT volume in Hounsfield units placed in DICOM patient coordinates (LPS,
mm): the image rows run along +x (patient left), the columns along +y (posterior), slices along
+z (superior), and the volume is centred on ``(0, 0, z_center_mm)``.

Anatomy (all analytic, in mm): air around the patient, a CT couch, a body ellipse with a fat layer
and muscle, the rib cage (ribs, sternum, spine), two lungs with a diaphragm dome and apex,
mediastinal fat, heart and aorta, a branching airway tree (air lumen inside a soft-tissue wall) and
branching pulmonary vessels that thin toward the periphery. Nodules (solid, part-solid,
ground-glass) are slightly ellipsoidal; some sit free in the lung, some against the pleura, some
against a vessel. Finally correlated Gaussian noise (low-dose) and a slight blur are applied.

Every shape is drawn inside its own bounding box; only the noise and the blur touch the full grid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from inference.volume import Volume

NODULE_KINDS: tuple[str, ...] = ("solid", "part-solid", "ground-glass")

FloatArray = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

# Hounsfield units of the tissues.
HU_AIR = -1000.0
HU_FAT = -100.0
HU_MUSCLE = 40.0
HU_SOFT = 35.0
HU_LUNG = -850.0
HU_MEDIASTINAL_FAT = -90.0
HU_BLOOD = 40.0
HU_CANCELLOUS = 300.0
HU_CORTICAL = 700.0
HU_RIB = 550.0
HU_DISC = 70.0
HU_CSF = 15.0
HU_COUCH = 60.0
HU_AIRWAY_WALL = 20.0
HU_SOLID = 30.0
HU_GGO = -600.0

REFERENCE_FOV_MM = 360.0  # anatomy sizes are given for this field of view and scaled to smaller ones
DEFAULT_Z_CENTER_MM = -150.0


@dataclass(frozen=True)
class PhantomNodule:
    """A nodule as the ground truth gives it."""

    center_mm: tuple[float, float, float]  # patient LPS mm
    diameter_mm: float  # equivalent-sphere diameter
    kind: str  # "solid" | "part-solid" | "ground-glass"


@dataclass(frozen=True)
class Phantom:
    """A synthetic CT volume and the nodules inside it."""

    volume: Volume  # HU, float32
    nodules: tuple[PhantomNodule, ...]


def phantom_affine(shape_kji: tuple[int, int, int], spacing_ijk: tuple[float, float, float],
                   z_center_mm: float = DEFAULT_Z_CENTER_MM) -> F64:
    """The affine of an axial volume centred on ``(0, 0, z_center_mm)``, direction cosines identity."""
    k, j, i = shape_kji
    si, sj, sk = spacing_ijk
    affine = np.eye(4)
    affine[0, 0], affine[1, 1], affine[2, 2] = si, sj, sk
    affine[:3, 3] = (-(i - 1) * si / 2.0, -(j - 1) * sj / 2.0, z_center_mm - (k - 1) * sk / 2.0)
    return affine


@dataclass(frozen=True)
class _Grid:
    x: F64  # (I,) patient x of each column index i
    y: F64  # (J,)
    z: F64  # (K,)
    spacing: tuple[float, float, float]

    def index_range(self, axis: int, low: float, high: float) -> tuple[int, int]:
        """Half-open index range of the voxels whose centres can lie in [low, high] mm on ``axis``."""
        coords = (self.x, self.y, self.z)[axis]
        step = self.spacing[axis]
        a = math.floor((low - coords[0]) / step)
        b = math.ceil((high - coords[0]) / step) + 1
        return max(a, 0), min(b, coords.size)

    def box(self, low: F64, high: F64) -> tuple[slice, slice, slice] | None:
        """Array slices ``[k, j, i]`` covering the mm box ``low..high`` (x, y, z), or None if empty."""
        i0, i1 = self.index_range(0, low[0], high[0])
        j0, j1 = self.index_range(1, low[1], high[1])
        k0, k1 = self.index_range(2, low[2], high[2])
        if i0 >= i1 or j0 >= j1 or k0 >= k1:
            return None
        return slice(k0, k1), slice(j0, j1), slice(i0, i1)

    def coords(self, box: tuple[slice, slice, slice]) -> tuple[F64, F64, F64]:
        """Broadcastable patient coordinates (x, y, z) of a box."""
        ks, js, is_ = box
        return self.x[is_][None, None, :], self.y[js][None, :, None], self.z[ks][:, None, None]


@dataclass(frozen=True)
class _Lung:
    cx: float
    cy: float
    ax: float
    ay: float
    z_mid: float  # above this the lung narrows toward the apex
    h_up: float  # apex at z_mid + h_up
    z_base: float  # lowest point of the lung (lateral recess)
    dome: float  # height of the diaphragm dome over z_base at the lung's centre

    def r2(self, x: F64, y: F64) -> F64:
        return ((x - self.cx) / self.ax) ** 2 + ((y - self.cy) / self.ay) ** 2

    def contains(self, x: F64, y: F64, z: F64) -> BoolArray:
        r2 = self.r2(x, y)
        t = np.maximum((z - self.z_mid) / self.h_up, 0.0)
        base = self.z_base + self.dome * (1.0 - np.minimum(r2, 1.0))
        return (r2 < 1.0 - t * t) & (z > base)


@dataclass(frozen=True)
class _Anatomy:
    body_ax: float
    body_ay: float
    body_cy: float
    fat: float  # thickness of the subcutaneous fat
    cavity_ax: float  # inner surface of the rib cage
    cavity_ay: float
    cavity_cy: float
    mediastinum_hw: float
    spine_y: float
    spine_r: float
    aorta_xy: tuple[float, float]
    aorta_r: float
    heart_c: tuple[float, float, float]
    heart_axes: tuple[float, float, float]
    lungs: tuple[_Lung, _Lung]  # right (x < 0), left (x > 0)
    z_top: float  # top of the lungs
    z_bottom: float

    def in_cavity(self, x: F64, y: F64) -> BoolArray:
        return (x / self.cavity_ax) ** 2 + ((y - self.cavity_cy) / self.cavity_ay) ** 2 < 1.0

    def in_mediastinum(self, x: F64, y: F64) -> BoolArray:
        ax, ay = self.aorta_xy
        return (
            (np.abs(x) < self.mediastinum_hw)
            | (x * x + (y - self.spine_y) ** 2 < (self.spine_r + 10.0) ** 2)
            | ((x - ax) ** 2 + (y - ay) ** 2 < (self.aorta_r + 3.0) ** 2)
        )

    def in_heart(self, x: F64, y: F64, z: F64) -> BoolArray:
        hx, hy, hz = self.heart_c
        a, b, c = self.heart_axes
        return ((x - hx) / a) ** 2 + ((y - hy) / b) ** 2 + ((z - hz) / c) ** 2 < 1.0

    def in_lung(self, x: F64, y: F64, z: F64) -> BoolArray:
        """Whether points (broadcastable arrays, mm) lie in lung parenchyma."""
        inside = self.lungs[0].contains(x, y, z) | self.lungs[1].contains(x, y, z)
        return inside & self.in_cavity(x, y) & ~self.in_mediastinum(x, y) & ~self.in_heart(x, y, z)

    def in_lung_points(self, pts: F64) -> BoolArray:
        return self.in_lung(pts[..., 0], pts[..., 1], pts[..., 2])


def _make_anatomy(rng: np.random.Generator, grid: _Grid) -> _Anatomy:
    fov = min(grid.x[-1] - grid.x[0], grid.y[-1] - grid.y[0])
    f = min(1.0, fov / REFERENCE_FOV_MM)
    z_lo, z_hi = float(grid.z[0]), float(grid.z[-1])
    z_len = z_hi - z_lo
    body_ax = f * rng.uniform(145.0, 165.0)
    body_ay = f * rng.uniform(100.0, 118.0)
    body_cy = f * rng.uniform(-5.0, 5.0)
    fat = f * rng.uniform(6.0, 16.0)
    muscle = f * 12.0
    cavity_ax = body_ax - fat - muscle
    cavity_ay = body_ay - fat - muscle
    cavity_cy = body_cy + f * 3.0
    # The lungs fill most of the slab: top at ~92 % of the z extent (or 280 mm long at most).
    height = min(0.9 * z_len, rng.uniform(240.0, 280.0))
    z_top = z_lo + 0.5 * z_len + 0.5 * height + rng.uniform(-0.03, 0.03) * z_len
    z_top = min(z_top, z_hi - 0.03 * z_len)
    z_bottom = z_top - height
    dome = 0.22 * height
    lungs = []
    for side in (-1.0, 1.0):
        ax = cavity_ax * rng.uniform(0.5, 0.56)
        lungs.append(_Lung(
            cx=side * (cavity_ax - ax * rng.uniform(0.85, 0.95)),
            cy=cavity_cy + f * rng.uniform(0.0, 6.0),
            ax=ax,
            ay=cavity_ay * rng.uniform(0.9, 1.0),
            z_mid=z_top - 0.42 * height,
            h_up=0.42 * height,
            z_base=z_bottom,
            dome=dome * rng.uniform(0.85, 1.1),
        ))
    spine_r = f * rng.uniform(16.0, 20.0)
    spine_y = cavity_cy + cavity_ay - spine_r * 0.6
    heart_c = (f * rng.uniform(10.0, 25.0), cavity_cy - cavity_ay * 0.3, z_bottom + 0.3 * height)
    heart_axes = (f * rng.uniform(48.0, 60.0), f * rng.uniform(38.0, 48.0), 0.22 * height)
    aorta_r = f * rng.uniform(10.0, 13.0)
    return _Anatomy(
        body_ax=body_ax, body_ay=body_ay, body_cy=body_cy, fat=fat,
        cavity_ax=cavity_ax, cavity_ay=cavity_ay, cavity_cy=cavity_cy,
        mediastinum_hw=f * rng.uniform(18.0, 24.0), spine_y=spine_y, spine_r=spine_r,
        aorta_xy=(f * 18.0, spine_y - spine_r - aorta_r - 2.0), aorta_r=aorta_r,
        heart_c=heart_c, heart_axes=heart_axes, lungs=(lungs[0], lungs[1]),
        z_top=z_top, z_bottom=z_bottom,
    )


def _ellipse(x: F64, y: F64, cx: float, cy: float, ax: float, ay: float) -> BoolArray:
    return ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 < 1.0


def _paint_body(vol: FloatArray, grid: _Grid, an: _Anatomy, rng: np.random.Generator) -> None:
    """Couch, body, fat, muscle, rib cage, spine, mediastinum, heart, aorta and lungs."""
    x2, y2 = grid.x[None, :], grid.y[:, None]
    z = grid.z
    # CT couch: a curved carbon-fibre board under the patient.
    couch_y = an.body_cy + an.body_ay + 8.0
    sag = couch_y - 0.0006 * (x2 * x2)  # the board curves up at the sides
    couch = (y2 > sag) & (y2 < sag + 7.0) & (np.abs(x2) < 0.95 * an.body_ax + 30.0)
    vol[:, couch] = HU_COUCH
    vol[:, _ellipse(x2, y2, 0.0, an.body_cy, an.body_ax, an.body_ay)] = HU_FAT
    muscle = _ellipse(x2, y2, 0.0, an.body_cy, an.body_ax - an.fat, an.body_ay - an.fat)
    vol[:, muscle] = HU_MUSCLE
    cavity = an.in_cavity(x2, y2)
    vol[:, cavity] = HU_SOFT
    k_lo, k_hi = grid.index_range(2, an.z_bottom + an.lungs[0].dome * 0.5, an.z_top + 20.0)
    mfat = cavity & (np.abs(x2) < an.mediastinum_hw + 8.0) & (y2 < an.spine_y - an.spine_r)
    vol[k_lo:k_hi, mfat] = HU_MEDIASTINAL_FAT
    # Sternum.
    sy = an.cavity_cy - an.cavity_ay - 4.0
    vol[k_lo:k_hi, _ellipse(x2, y2, 0.0, sy, 14.0, 6.0)] = HU_RIB
    # Spine: vertebral bodies with a cortical rim, discs every ~28 mm, canal, spinous process.
    r_sp = an.spine_r
    d2 = x2 * x2 + (y2 - an.spine_y) ** 2
    body_all = d2 < r_sp * r_sp
    cortex = body_all & (d2 > (r_sp - 2.0) ** 2)
    marrow = body_all & ~cortex
    period, disc = rng.uniform(25.0, 30.0), rng.uniform(4.0, 6.0)
    phase = rng.uniform(0.0, period)
    in_disc = np.mod(z - phase, period) < disc
    vol[:, cortex] = HU_CORTICAL
    vol[:, marrow] = HU_CANCELLOUS
    for kd in np.nonzero(in_disc)[0].tolist():
        vol[kd][body_all] = HU_DISC
    canal_y = an.spine_y + r_sp + 8.0
    arch = _ellipse(x2, y2, 0.0, canal_y, 17.0, 13.0)
    canal = _ellipse(x2, y2, 0.0, canal_y, 9.0, 8.0)
    spinous = _ellipse(x2, y2, 0.0, canal_y + 20.0, 5.0, 14.0)
    vol[:, arch | spinous] = HU_RIB
    vol[:, canal] = HU_CSF
    # Ribs: a ring just outside the cavity, cut into oblique bands (higher at the back).
    ring = _ellipse(x2, y2, 0.0, an.cavity_cy, an.cavity_ax + 9.0, an.cavity_ay + 9.0) & ~_ellipse(
        x2, y2, 0.0, an.cavity_cy, an.cavity_ax + 1.0, an.cavity_ay + 1.0)
    ring &= ~((np.abs(x2) < 30.0) & (y2 < an.cavity_cy))  # costal cartilage gap in front
    ring &= np.abs(x2) > an.spine_r + 12.0
    rj, ri = np.nonzero(ring)
    theta = np.arctan2(grid.y[rj] - an.cavity_cy, np.abs(grid.x[ri]))  # +pi/2 at the back
    rib_period, rib_thick = rng.uniform(22.0, 27.0), rng.uniform(8.0, 11.0)
    rib_phase = rng.uniform(0.0, rib_period)
    lift = 25.0 * (1.0 + np.sin(theta))  # ribs slope down toward the front
    for k in range(*grid.index_range(2, an.z_bottom - 20.0, an.z_top + 15.0)):
        band = np.mod(z[k] - lift - rib_phase, rib_period) < rib_thick
        vol[k, rj[band], ri[band]] = HU_RIB
    # Heart and aorta (in the mediastinal fat), then the lungs slice by slice inside their box.
    ax, ay = an.aorta_xy
    vol[k_lo:k_hi, _ellipse(x2, y2, ax, ay, an.aorta_r, an.aorta_r)] = HU_BLOOD
    hx, hy, hz = an.heart_c
    ha, hb, hc = an.heart_axes
    hbox = grid.box(np.array([hx - ha, hy - hb, hz - hc]), np.array([hx + ha, hy + hb, hz + hc]))
    if hbox is not None:
        bx, by, bz = grid.coords(hbox)
        block = vol[hbox]
        block[an.in_heart(bx, by, bz)] = HU_BLOOD
    for lung in an.lungs:
        low = np.array([lung.cx - lung.ax, lung.cy - lung.ay, lung.z_base])
        high = np.array([lung.cx + lung.ax, lung.cy + lung.ay, an.z_top])
        lbox = grid.box(low, high)
        if lbox is None:
            continue
        ks, js, is_ = lbox
        bx2, by2 = grid.x[is_][None, :], grid.y[js][:, None]
        static = an.in_cavity(bx2, by2) & ~an.in_mediastinum(bx2, by2)
        r2 = lung.r2(bx2, by2)
        base = lung.z_base + lung.dome * (1.0 - np.minimum(r2, 1.0))
        gradient = np.broadcast_to(HU_LUNG + 45.0 * (by2 - lung.cy) / lung.ay, r2.shape).astype(np.float32)
        hx_, hy_, hz_ = an.heart_c
        heart_r2 = ((bx2 - hx_) / ha) ** 2 + ((by2 - hy_) / hb) ** 2
        for k in range(ks.start, ks.stop):
            zk = z[k]
            t = max((zk - lung.z_mid) / lung.h_up, 0.0)
            m = static & (r2 < 1.0 - t * t) & (zk > base)
            dz = ((zk - hz_) / hc) ** 2
            if dz < 1.0:
                m &= heart_r2 >= 1.0 - dz
            sl = vol[k, js, is_]
            sl[m] = gradient[m]


@dataclass(frozen=True)
class _Segment:
    p0: F64
    p1: F64
    r0: float
    r1: float


def _paint_capsule(vol: FloatArray, grid: _Grid, seg: _Segment, value: float, *, darken: bool,
                   grow: float = 0.0) -> None:
    """Blend a tapered tube into ``vol`` with a one-voxel soft edge, inside its bounding box only.

    ``darken`` keeps the minimum of old and blended values (air lumen), otherwise the maximum.
    """
    r0, r1 = seg.r0 + grow, seg.r1 + grow
    rmax = max(r0, r1) + max(grid.spacing)
    box = grid.box(np.minimum(seg.p0, seg.p1) - rmax, np.maximum(seg.p0, seg.p1) + rmax)
    if box is None:
        return
    bx, by, bz = grid.coords(box)
    d = seg.p1 - seg.p0
    length2 = float(d @ d) or 1e-9
    rx, ry, rz = bx - seg.p0[0], by - seg.p0[1], bz - seg.p0[2]
    t = np.clip((rx * d[0] + ry * d[1] + rz * d[2]) / length2, 0.0, 1.0)
    dist = np.sqrt((rx - t * d[0]) ** 2 + (ry - t * d[1]) ** 2 + (rz - t * d[2]) ** 2)
    edge = min(grid.spacing[0], grid.spacing[1])
    alpha = np.clip((r0 + t * (r1 - r0) - dist) / edge + 0.5, 0.0, 1.0).astype(np.float32)
    block = vol[box]
    blended = block + alpha * (np.float32(value) - block)
    if darken:
        np.minimum(block, blended, out=block)
    else:
        np.maximum(block, blended, out=block)


def _unit(v: F64) -> F64:
    return v / (np.linalg.norm(v) + 1e-12)


def _rotate_away(rng: np.random.Generator, direction: F64, angle: float, axis: F64 | None = None) -> F64:
    """``direction`` turned by ``angle`` radians about a random (or given) perpendicular axis."""
    if axis is None:
        axis = _unit(np.cross(direction, rng.normal(size=3)))
    return _unit(direction * math.cos(angle) + np.cross(axis, direction) * math.sin(angle))


def _grow_tree(rng: np.random.Generator, an: _Anatomy, root: F64, direction: F64, radius: float,
               min_radius: float, first_in_lung: bool = False) -> list[_Segment]:
    """A bifurcating tree of tapered tubes grown from ``root``; branches stop at the lung border."""
    out: list[_Segment] = []
    stack: list[tuple[F64, F64, float, int]] = [(root, direction, radius, 0)]
    centres = np.array([[lung.cx, lung.cy] for lung in an.lungs])
    while stack:
        p, d, r, gen = stack.pop()
        length = float(np.clip(r * rng.uniform(6.0, 10.0), 5.0, 35.0))
        p1 = p + d * length
        if gen > 0 or first_in_lung:
            # Near the pleura, bend back toward the lung's axis a few times before giving up.
            c = centres[int(np.argmin(np.abs(centres[:, 0] - p[0])))]
            inward = _unit(np.array([c[0] - p[0], c[1] - p[1], 0.0]))
            for _ in range(3):
                if an.in_lung_points(p1)[()]:
                    break
                d = _unit(d + 0.8 * inward + 0.3 * rng.normal(size=3))
                length *= 0.7
                p1 = p + d * length
            else:
                if not an.in_lung_points(p1)[()]:
                    continue
        r_end = r * 0.95
        out.append(_Segment(p, p1, r, r_end))
        if r_end * 0.8 < min_radius:
            continue
        # Pull the children outward from the lung's axis so the tree spreads to the periphery.
        c = centres[int(np.argmin(np.abs(centres[:, 0] - p1[0])))]
        outward = _unit(np.array([p1[0] - c[0], p1[1] - c[1], 0.0]))
        base = _unit(d + 0.25 * outward + 0.1 * rng.normal(size=3))
        axis = _unit(np.cross(base, rng.normal(size=3)))
        major = r_end * rng.uniform(0.8, 0.9)
        minor = r_end * rng.uniform(0.55, 0.8)
        stack.append((p1, _rotate_away(rng, base, math.radians(rng.uniform(10, 30)), axis), major, gen + 1))
        if minor >= min_radius:
            stack.append((p1, _rotate_away(rng, base, -math.radians(rng.uniform(25, 55)), axis), minor,
                          gen + 1))
    return out


def _airways(rng: np.random.Generator, an: _Anatomy, f: float) -> list[_Segment]:
    """Trachea, main bronchi and their branches."""
    carina = np.array([0.0, an.aorta_xy[1] - 5.0 * f, an.z_top - 0.3 * (an.z_top - an.z_bottom)])
    top = np.array([0.0, carina[1] - 15.0 * f, an.z_top + 30.0])
    r_trachea = 8.5 * f
    segments = [_Segment(top, carina, r_trachea, r_trachea)]
    for lung in an.lungs:
        hilum = np.array([lung.cx - 0.45 * lung.ax * np.sign(lung.cx), lung.cy - 0.1 * lung.ay,
                          carina[2] - 20.0])
        segments.append(_Segment(carina, hilum, 6.0 * f, 5.0 * f))
        for _ in range(3):
            target = _random_lung_point(rng, an, lung)
            d = _unit(target - hilum)
            segments += _grow_tree(rng, an, hilum, d, 4.0 * f, 1.0)
    return segments


def _vessels(rng: np.random.Generator, an: _Anatomy, f: float) -> list[_Segment]:
    segments: list[_Segment] = []
    for lung in an.lungs:
        hilum = np.array([lung.cx - 0.55 * lung.ax * np.sign(lung.cx), lung.cy - 0.2 * lung.ay,
                          an.heart_c[2] + an.heart_axes[2] * 0.6])
        for _ in range(7):
            target = _random_lung_point(rng, an, lung)
            d = _unit(target - hilum)
            segments += _grow_tree(rng, an, hilum, d, rng.uniform(3.5, 5.0) * f, 0.6)
    return segments


def _random_lung_point(rng: np.random.Generator, an: _Anatomy, lung: _Lung | None = None) -> F64:
    lungs = an.lungs if lung is None else (lung,)
    for _ in range(1000):
        lu = lungs[int(rng.integers(len(lungs)))]
        p = np.array([lu.cx + lu.ax * rng.uniform(-1, 1), lu.cy + lu.ay * rng.uniform(-1, 1),
                      rng.uniform(lu.z_base, an.z_top)])
        if an.in_lung_points(p)[()]:
            return p
    raise RuntimeError("could not find a point inside the lungs")


_SPHERE_DIRS = _unit(np.array([[a, b, c] for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1)
                               if (a, b, c) != (0, 0, 0)], dtype=np.float64).T).T


def _lung_fraction(an: _Anatomy, centre: F64, radius: float) -> float:
    pts = centre[None, :] + radius * _SPHERE_DIRS / np.linalg.norm(_SPHERE_DIRS, axis=1)[:, None]
    return float(np.mean(an.in_lung_points(pts)))


def _place_nodule(rng: np.random.Generator, an: _Anatomy, radius: float, vessels: list[_Segment],
                  taken: list[tuple[F64, float]]) -> F64:
    """A centre for a nodule of ``radius``: free in the lung, juxta-pleural or juxta-vascular."""
    big = [s for s in vessels if s.r0 >= 1.2]
    for attempt in range(400):
        mode = rng.choice(3, p=(0.6, 0.25, 0.15)) if attempt < 300 else 0
        if mode == 2 and big:
            seg = big[int(rng.integers(len(big)))]
            t = rng.uniform(0.2, 0.8)
            axis = seg.p1 - seg.p0
            on = seg.p0 + t * axis
            side = _unit(np.cross(axis, rng.normal(size=3)))
            c = on + side * (seg.r0 + 0.85 * radius)
            ok = an.in_lung_points(c)[()] and _lung_fraction(an, c, radius + 1.0) >= 0.9
        elif mode == 1:
            p = _random_lung_point(rng, an)
            d = _unit(rng.normal(size=3) * np.array([1.0, 1.0, 0.3]))
            step = 0
            while an.in_lung_points(p + d)[()] and step < 400:
                p = p + d
                step += 1
            c = p - d * radius * rng.uniform(0.75, 0.95)
            frac = _lung_fraction(an, c, radius + 0.5)
            ok = bool(an.in_lung_points(c)[()]) and 0.5 <= frac < 1.0
        else:
            c = _random_lung_point(rng, an)
            ok = _lung_fraction(an, c, radius + 2.0) == 1.0 and _lung_fraction(an, c, radius * 0.5) == 1.0
        if ok and all(np.linalg.norm(c - q) > radius + rq + 4.0 for q, rq in taken):
            return c
    raise RuntimeError(f"could not place a nodule of diameter {2 * radius:.1f} mm")


def _paint_ellipsoid(vol: FloatArray, grid: _Grid, centre: F64, radius: float, axes: F64, rot: F64,
                     value: float, texture: float, rng: np.random.Generator) -> None:
    """Blend a rotated ellipsoid of equivalent radius ``radius`` (mm) with a soft edge (maximum)."""
    reach = radius * float(np.max(axes)) + max(grid.spacing)
    box = grid.box(centre - reach, centre + reach)
    if box is None:
        return
    bx, by, bz = grid.coords(box)
    rel = (bx - centre[0], by - centre[1], bz - centre[2])
    r2 = np.zeros(np.broadcast_shapes(bx.shape, by.shape, bz.shape), dtype=np.float64)
    for a in range(3):
        q = rel[0] * rot[0, a] + rel[1] * rot[1, a] + rel[2] * rot[2, a]
        r2 = r2 + (q / (radius * axes[a])) ** 2
    edge = min(grid.spacing[0], grid.spacing[1])
    alpha = np.clip((1.0 - np.sqrt(r2)) * radius / edge + 0.5, 0.0, 1.0).astype(np.float32)
    target: FloatArray | np.float32 = np.float32(value)
    if texture > 0:
        target = target + (texture * rng.standard_normal(alpha.shape)).astype(np.float32)
    block = vol[box]
    np.maximum(block, block + alpha * (target - block), out=block)


def _random_rotation(rng: np.random.Generator) -> F64:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


def _paint_nodule(vol: FloatArray, grid: _Grid, centre: F64, diameter: float, kind: str,
                  rng: np.random.Generator) -> None:
    axes = rng.uniform(0.85, 1.15, size=3)
    axes /= np.cbrt(np.prod(axes))  # keep the equivalent-sphere diameter exact
    rot = _random_rotation(rng)
    radius = diameter / 2.0
    if kind == "solid":
        _paint_ellipsoid(vol, grid, centre, radius, axes, rot, HU_SOLID + rng.uniform(-15, 15), 0.0, rng)
    elif kind == "ground-glass":
        _paint_ellipsoid(vol, grid, centre, radius, axes, rot, HU_GGO + rng.uniform(-60, 80), 25.0, rng)
    elif kind == "part-solid":
        _paint_ellipsoid(vol, grid, centre, radius, axes, rot, HU_GGO + rng.uniform(-50, 80), 25.0, rng)
        core = radius * rng.uniform(0.35, 0.6)
        _paint_ellipsoid(vol, grid, centre, core, axes, rot, HU_SOLID + rng.uniform(-15, 15), 0.0, rng)
    else:
        raise ValueError(f"unknown nodule kind {kind!r}; expected one of {NODULE_KINDS}")


def _three_tap(sigma_vox: float) -> tuple[float, float]:
    """Centre and side weights of a normalised 3-tap Gaussian kernel."""
    side = math.exp(-0.5 / (sigma_vox * sigma_vox)) if sigma_vox > 0 else 0.0
    return 1.0 / (1.0 + 2.0 * side), side / (1.0 + 2.0 * side)


def _blur_axis(block: FloatArray, axis: int, centre: float, side: float) -> None:
    """In-place 3-tap blur along ``axis`` (the border voxels are left as they are)."""
    if side == 0.0 or block.shape[axis] < 3:
        return
    lo: list[slice] = [slice(None)] * block.ndim
    hi = list(lo)
    mid = list(lo)
    lo[axis], hi[axis], mid[axis] = slice(0, -2), slice(2, None), slice(1, -1)
    tmp = block[tuple(lo)] + block[tuple(hi)]
    tmp *= np.float32(side)
    m = block[tuple(mid)]
    m *= np.float32(centre)
    m += tmp


def _noise_and_blur(vol: FloatArray, grid: _Grid, sigma_hu: float, rng: np.random.Generator) -> None:
    """Add white noise, then blur in-plane (in place): the noise gets a CT-like texture and ends
    with standard deviation ``sigma_hu``; edges get a slight partial-volume blur."""
    blur_mm = 0.45
    weights = [_three_tap(blur_mm / grid.spacing[a]) for a in (0, 1)]
    energy = 1.0
    for c, s in weights:
        energy *= c * c + 2 * s * s
    pre = np.float32(sigma_hu / math.sqrt(energy))
    chunk = 16
    for k0 in range(0, vol.shape[0], chunk):
        part = vol[k0:k0 + chunk]
        noise = rng.standard_normal(part.shape, dtype=np.float32)
        noise *= pre
        part += noise
        _blur_axis(part, 2, *weights[0])
        _blur_axis(part, 1, *weights[1])


def make_phantom(seed: int, shape_kji: tuple[int, int, int] = (300, 512, 512),
                 spacing_ijk: tuple[float, float, float] = (0.7, 0.7, 1.25),
                 n_nodules: int | None = None,
                 nodule_diameters_mm: Sequence[float] | None = None,
                 *,
                 nodule_kinds: Sequence[str] | None = None,
                 noise_sigma_hu: float | None = None,
                 z_center_mm: float = DEFAULT_Z_CENTER_MM) -> Phantom:
    """A synthetic low-dose chest CT with lung nodules; the same arguments give the same phantom.

    ``n_nodules`` defaults to the length of ``nodule_diameters_mm`` or to 3; diameters default to
    uniform 5–25 mm, kinds to solid 50 %, part-solid 25 %, ground-glass 25 %, and the noise to a
    uniform 20–40 HU standard deviation.
    """
    rng = np.random.default_rng(seed)
    if n_nodules is None:
        n_nodules = len(nodule_diameters_mm) if nodule_diameters_mm is not None else 3
    if nodule_diameters_mm is None:
        diameters = [float(d) for d in rng.uniform(5.0, 25.0, size=n_nodules)]
    else:
        if len(nodule_diameters_mm) != n_nodules:
            raise ValueError("nodule_diameters_mm must have n_nodules entries")
        diameters = [float(d) for d in nodule_diameters_mm]
    if nodule_kinds is None:
        kinds = [NODULE_KINDS[int(i)] for i in rng.choice(3, size=n_nodules, p=(0.5, 0.25, 0.25))]
    else:
        if len(nodule_kinds) != n_nodules or any(k not in NODULE_KINDS for k in nodule_kinds):
            raise ValueError(f"nodule_kinds must have n_nodules entries out of {NODULE_KINDS}")
        kinds = list(nodule_kinds)
    sigma = float(rng.uniform(20.0, 40.0)) if noise_sigma_hu is None else float(noise_sigma_hu)

    affine = phantom_affine(shape_kji, spacing_ijk, z_center_mm)
    k, j, i = shape_kji
    grid = _Grid(x=affine[0, 3] + np.arange(i) * spacing_ijk[0], y=affine[1, 3] + np.arange(j) * spacing_ijk[1],
                 z=affine[2, 3] + np.arange(k) * spacing_ijk[2], spacing=spacing_ijk)
    an = _make_anatomy(rng, grid)
    f = min(1.0, min(grid.x[-1] - grid.x[0], grid.y[-1] - grid.y[0]) / REFERENCE_FOV_MM)

    vol = np.full(shape_kji, HU_AIR, dtype=np.float32)
    _paint_body(vol, grid, an, rng)
    for seg in _airways(rng, an, f):
        wall = max(0.35, 0.18 * seg.r0)
        _paint_capsule(vol, grid, seg, HU_AIRWAY_WALL - 60.0, darken=False, grow=wall)
        _paint_capsule(vol, grid, seg, HU_AIR + 20.0, darken=True)
    vessels = _vessels(rng, an, f)
    for seg in vessels:
        _paint_capsule(vol, grid, seg, HU_BLOOD, darken=False)

    taken: list[tuple[F64, float]] = []
    nodules: list[PhantomNodule] = []
    order = np.argsort(diameters)[::-1]  # place the big ones first
    placed: dict[int, F64] = {}
    for idx in order:
        radius = diameters[idx] / 2.0
        placed[int(idx)] = _place_nodule(rng, an, radius, vessels, taken)
        taken.append((placed[int(idx)], radius))
    for idx in range(n_nodules):
        c = placed[idx]
        _paint_nodule(vol, grid, c, diameters[idx], kinds[idx], rng)
        nodules.append(PhantomNodule(center_mm=(float(c[0]), float(c[1]), float(c[2])),
                                     diameter_mm=diameters[idx], kind=kinds[idx]))
    _noise_and_blur(vol, grid, sigma, rng)
    return Phantom(volume=Volume(array=vol, affine=affine), nodules=tuple(nodules))

