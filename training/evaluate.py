"""Held-out evaluation of an exported model on fresh phantoms: sensitivity and false positives per scan.

Evaluation runs the service's own path from volume to findings (``inference.pipeline.detect_in_volume``:
the shared pre-processing, the manifest's runner and sliding window, ``inference.postprocess``), so it
measures exactly what the service runs. What it adds is the yardstick: a detection matches a nodule
when its centroid lies within the nodule's radius (at least ``MIN_MATCH_RADIUS_MM``) of the nodule's
centre. ``sliding_window_logits`` and ``detect`` are thin adapters onto the same inference code for
callers that hold an ONNX Runtime session and a logits array.
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

from inference.manifest import MANIFEST_NAME, load_manifest
from inference.pipeline import detect_in_volume
from inference.postprocess import detections_from_output
from inference.registry import LoadedModel, RegisteredModel, create_runner, verify_files
from inference.runners import sliding_window_predict
from inference.volume import Volume
from tamsoat.core.domain import Detection as ServiceDetection
from training.nodule_mix import draw_nodules
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
    """The ``n``-th held-out phantom: full size (300x512x512 at 0.7x0.7x1.25 mm), nodules 3–30 mm in the
    LIDC size and type mix (``training.nodule_mix``)."""
    seed = seed_base + n
    rng = np.random.default_rng([seed, 3])
    while True:
        diameters, kinds = draw_nodules(rng, nodules)
        try:
            return make_phantom(seed, n_nodules=nodules, nodule_diameters_mm=diameters, nodule_kinds=kinds)
        except RuntimeError:
            nodules -= 1


class _SessionPredictor:
    """An ONNX Runtime session (or anything with its ``get_inputs``/``run``) as a ``Predictor``."""

    def __init__(self, session: ort.InferenceSession) -> None:
        self._session = session
        self._name = session.get_inputs()[0].name

    @property
    def fixed_shape(self) -> tuple[int, int, int] | None:
        return None

    @property
    def max_batch(self) -> int | None:
        return None

    def predict(self, x: F32) -> F32:
        return np.asarray(self._session.run(None, {self._name: x})[0], dtype=np.float32)


def sliding_window_logits(session: ort.InferenceSession, image: F32, patch: Sequence[int], divisible_by: int,
                          overlap: int = 16) -> F32:
    """Logits for a whole ``[k, j, i]`` image through the service's sliding window (``overlap`` in voxels)."""
    patch_size = (int(patch[0]), int(patch[1]), int(patch[2]))
    fraction = min(0.9, max(0.0, overlap / min(patch_size)))
    return sliding_window_predict(_SessionPredictor(session), image, patch_size, overlap=fraction,
                                  divisible_by=divisible_by)


def detect(logits: F32, grid: Volume, threshold: float, min_diameter_mm: float) -> list[Detection]:
    """Findings in a logits array on ``grid`` through the service's post-processing (``inference.postprocess``)."""
    grid = grid if grid.array.shape == logits.shape else Volume(array=logits, affine=grid.affine)
    found = detections_from_output(logits, grid, threshold=threshold, min_diameter_mm=min_diameter_mm)
    return [_as_detection(d) for d in found]


def _as_detection(d: ServiceDetection) -> Detection:
    return Detection(center_mm=d.center_mm, diameter_mm=d.diameter_mm, score=d.confidence)


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
    """Run the model in ``model_dir`` (a model folder: manifest.yaml and its files, any runtime) on
    ``scans`` held-out phantoms, through the service's own inference path."""
    manifest = load_manifest(model_dir / MANIFEST_NAME)
    model = RegisteredModel(manifest, model_dir)
    verify_files(model)
    loaded = LoadedModel(manifest=manifest, identity=model.identity, predictor=create_runner(model, threads))
    ev = Evaluation()
    for n in range(scans):
        phantom = held_out_phantom(n, seed_base=seed_base)
        t0 = time.monotonic()
        dets = [_as_detection(d) for d in detect_in_volume(phantom.volume, loaded)]
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
