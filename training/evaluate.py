"""Held-out evaluation of an exported model on fresh phantoms: sensitivity and false positives per scan.

This is the training stage's own yardstick, deliberately simple: sliding-window ONNX Runtime
inference on the shared pre-processing, ``sigmoid(logit) > threshold``, ``scipy.ndimage.label``,
components smaller than the manifest's ``min_diameter_mm`` dropped, and a detection matches a
nodule when its centroid lies within the nodule's radius (at least ``MIN_MATCH_RADIUS_MM``) of the
nodule's centre. The service's own post-processing lives in ``inference/``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import yaml
from scipy import ndimage

from inference.preprocess import normalize_hu, resample
from inference.volume import Volume
from training.phantom import NODULE_KINDS, Phantom, PhantomNodule, make_phantom

F32 = npt.NDArray[np.float32]
HELD_OUT_SEED_BASE = 900_000  # the reported evaluation
TUNING_SEED_BASE = 800_000  # for choosing between candidate models or operating points
MIN_MATCH_RADIUS_MM = 2.5


@dataclass(frozen=True)
class Detection:
    center_mm: tuple[float, float, float]
    diameter_mm: float
    score: float


def held_out_phantom(n: int, nodules: int = 5, seed_base: int = HELD_OUT_SEED_BASE) -> Phantom:
    """The ``n``-th held-out phantom: full size (300x512x512 at 0.7x0.7x1.25 mm), log-uniform 3–30 mm."""
    seed = seed_base + n
    rng = np.random.default_rng([seed, 3])
    while True:
        diameters = np.exp(rng.uniform(math.log(3.0), math.log(30.0), size=nodules)).tolist()
        try:
            return make_phantom(seed, n_nodules=nodules, nodule_diameters_mm=diameters)
        except RuntimeError:
            nodules -= 1


def open_session(model_path: Path, threads: int = 2) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])


def _taper(n: int, margin: int) -> F32:
    w = np.ones(n, dtype=np.float32)
    if margin > 0:
        ramp = (np.arange(margin, dtype=np.float32) + 1.0) / (margin + 1.0)
        w[:margin] = ramp
        w[n - margin:] = ramp[::-1]
    return w


def _starts(size: int, patch: int, step: int) -> list[int]:
    if size <= patch:
        return [0]
    starts = [*range(0, size - patch, step), size - patch]
    return sorted(set(starts))


def sliding_window_logits(session: ort.InferenceSession, image: F32, patch: Sequence[int], divisible_by: int,
                          overlap: int = 16) -> F32:
    """Logits for a whole ``[k, j, i]`` image: zero-padded to the stride, tiled with tapered overlap."""
    shape = np.array(image.shape)
    padded_shape = np.maximum(-(-shape // divisible_by) * divisible_by, divisible_by)
    patch_a = np.minimum(np.array(patch), padded_shape)
    padded = np.zeros(tuple(padded_shape), dtype=np.float32)
    padded[: shape[0], : shape[1], : shape[2]] = image
    out = np.zeros_like(padded)
    weight = np.zeros_like(padded)
    tapers = [_taper(int(p), overlap // 2 if p < s else 0) for p, s in zip(patch_a, padded_shape, strict=True)]
    w3 = tapers[0][:, None, None] * tapers[1][None, :, None] * tapers[2][None, None, :]
    name = session.get_inputs()[0].name
    for k in _starts(int(padded_shape[0]), int(patch_a[0]), int(patch_a[0]) - overlap):
        for j in _starts(int(padded_shape[1]), int(patch_a[1]), int(patch_a[1]) - overlap):
            for i in _starts(int(padded_shape[2]), int(patch_a[2]), int(patch_a[2]) - overlap):
                sl = (slice(k, k + patch_a[0]), slice(j, j + patch_a[1]), slice(i, i + patch_a[2]))
                logits = session.run(None, {name: padded[sl][None, None]})[0][0, 0]
                out[sl] += logits * w3
                weight[sl] += w3
    out /= np.maximum(weight, 1e-6)
    return out[: shape[0], : shape[1], : shape[2]]


def detect(logits: F32, grid: Volume, threshold: float, min_diameter_mm: float) -> list[Detection]:
    """Connected components of ``sigmoid(logits) > threshold`` as detections (centroid, equivalent diameter)."""
    logit_threshold = math.log(threshold / (1.0 - threshold))
    mask = logits > logit_threshold
    labels, _ = ndimage.label(mask)
    voxel_mm3 = float(np.prod(grid.spacing))
    out = []
    # Per component inside its bounding box (scipy's labelled reductions are slow on big volumes).
    for label, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        component = labels[box] == label
        count = int(component.sum())
        diameter = (6.0 * count * voxel_mm3 / math.pi) ** (1.0 / 3.0)
        if diameter < min_diameter_mm:
            continue
        centroid_kji = np.argwhere(component).mean(axis=0) + np.array([sl.start for sl in box])
        peak = float(logits[box][component].max())
        c = grid.index_to_patient(centroid_kji[::-1])
        out.append(Detection(center_mm=(float(c[0]), float(c[1]), float(c[2])), diameter_mm=float(diameter),
                             score=float(1.0 / (1.0 + math.exp(-peak)))))
    return out


def match(detections: list[Detection], nodules: Sequence[PhantomNodule]) -> tuple[list[bool], int]:
    """Which nodules were found, and how many detections match no nodule."""
    found = [False] * len(nodules)
    false_positives = 0
    for d in detections:
        hit = False
        for n, nod in enumerate(nodules):
            radius = max(nod.diameter_mm / 2.0, MIN_MATCH_RADIUS_MM)
            if math.dist(d.center_mm, nod.center_mm) <= radius:
                found[n] = True
                hit = True
        false_positives += 0 if hit else 1
    return found, false_positives


@dataclass
class Evaluation:
    scans: int = 0
    nodules: int = 0
    found: int = 0
    nodules_6mm: int = 0
    found_6mm: int = 0
    false_positives: int = 0
    by_kind: dict[str, list[int]] = field(default_factory=lambda: {k: [0, 0] for k in NODULE_KINDS})
    missed: list[dict[str, Any]] = field(default_factory=list)
    inference_s: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        def ratio(a: int, b: int) -> float | None:
            return round(a / b, 3) if b else None
        return {
            "scans": self.scans,
            "nodules": self.nodules,
            "sensitivity": ratio(self.found, self.nodules),
            "nodules_ge_6mm": self.nodules_6mm,
            "sensitivity_ge_6mm": ratio(self.found_6mm, self.nodules_6mm),
            "nodules_lt_6mm": self.nodules - self.nodules_6mm,
            "sensitivity_lt_6mm": ratio(self.found - self.found_6mm, self.nodules - self.nodules_6mm),
            "sensitivity_by_kind": {k: ratio(v[0], v[1]) for k, v in self.by_kind.items()},
            "nodules_by_kind": {k: v[1] for k, v in self.by_kind.items()},
            "false_positives_per_scan": ratio(self.false_positives, self.scans),
            "inference_s_mean": round(float(np.mean(self.inference_s)), 2) if self.inference_s else None,
            "missed": self.missed,
        }


def evaluate_model(model_dir: Path, scans: int = 10, *, threads: int = 2, seed_base: int = HELD_OUT_SEED_BASE,
                   log: Any = print) -> dict[str, Any]:
    """Run the model in ``model_dir`` (manifest.yaml + model.onnx) on ``scans`` held-out phantoms."""
    manifest = yaml.safe_load((model_dir / "manifest.yaml").read_text())
    spec_in, spec_out = manifest["input"], manifest["output"]
    session = open_session(model_dir / "model.onnx", threads)
    ev = Evaluation()
    for n in range(scans):
        phantom = held_out_phantom(n, seed_base=seed_base)
        t0 = time.monotonic()
        grid = resample(phantom.volume, tuple(spec_in["spacing_mm"]))
        image = normalize_hu(grid.array, tuple(spec_in["window_hu"]))
        logits = sliding_window_logits(session, image, spec_in["patch_size"], int(spec_in["divisible_by"]))
        dets = detect(logits, grid, float(spec_out["threshold"]), float(spec_out["min_diameter_mm"]))
        ev.inference_s.append(time.monotonic() - t0)
        found, fps = match(dets, phantom.nodules)
        ev.scans += 1
        ev.false_positives += fps
        for nod, hit in zip(phantom.nodules, found, strict=True):
            ev.nodules += 1
            ev.found += hit
            ev.by_kind[nod.kind][1] += 1
            ev.by_kind[nod.kind][0] += hit
            if nod.diameter_mm >= 6.0:
                ev.nodules_6mm += 1
                ev.found_6mm += hit
            if not hit:
                ev.missed.append({"scan": n, **asdict(nod)})
        log(f"held-out phantom {n}: {sum(found)}/{len(found)} found, {fps} false positives, "
            f"{ev.inference_s[-1]:.1f} s")
    return ev.summary()
