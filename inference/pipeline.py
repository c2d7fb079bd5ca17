"""One series through the model: read -> volume -> resample -> inference -> findings.

``Engine`` is the facade the job runner uses: route a study to a model and a series, analyse it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
from pydicom.dataset import Dataset

from inference.dicom_series import (
    MIN_SLICES,
    SeriesError,
    build_volume,
    read_headers,
    read_instances,
    series_sha256,
    stack_geometry,
)
from inference.manifest import BOX_KIND, Manifest
from inference.postprocess import detections_from_output
from inference.preprocess import normalize_hu, resample, to_ras
from inference.registry import LoadedModel, ModelNotFoundError, Registry
from inference.routing import Router, RoutingDecision, RoutingError
from inference.runners import (
    BoxPredictor,
    ModelRunner,
    Predictor,
    RunnerError,
    sliding_window_boxes,
    sliding_window_predict,
)
from inference.volume import Volume
from tamsoat.core.domain import Detection, ModelIdentity, Point3

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AnalysisResult:
    """What the model found in one series, and enough about the series to report on it.

    ``slice_sop_instance_uids[k]`` is the image at slice index k of the source volume, whose
    voxel -> patient mapping is ``source_affine``; ``nearest_slice`` uses both to tie a finding
    to an image. ``timings`` are seconds per stage: read (files, hashes, parsing), volume
    (geometry checks, decoding to HU), resample (to the model spacing, and intensity window),
    inference, postprocess, and total.
    """

    series_instance_uid: str
    identity: ModelIdentity
    detections: tuple[Detection, ...]
    input_sha256: str
    timings: dict[str, float]
    frame_of_reference_uid: str
    slice_sop_instance_uids: tuple[str, ...]
    source_affine: tuple[tuple[float, ...], ...]

    def nearest_slice(self, point_mm: Point3) -> tuple[int, str]:
        """The source slice index nearest to a patient point, and that image's SOP Instance UID."""
        source = Volume(array=np.empty((0, 0, 0), dtype=np.float32), affine=np.array(self.source_affine))
        k = int(np.clip(round(float(source.patient_to_index(point_mm)[2])), 0,
                        len(self.slice_sop_instance_uids) - 1))
        return k, self.slice_sop_instance_uids[k]


class LoadedModelLike(Protocol):
    """What ``detect_in_volume`` needs of a model: its manifest and a runner (per-voxel or boxes)."""

    @property
    def manifest(self) -> Manifest: ...

    @property
    def predictor(self) -> ModelRunner: ...


class _Stopwatch:
    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._start = time.perf_counter()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = time.perf_counter() - t0

    def total(self) -> dict[str, float]:
        return {**self.timings, "total": time.perf_counter() - self._start}


def model_input(volume: Volume, manifest: Manifest) -> Volume:
    """The model's input grid: ``volume`` (HU) turned to RAS when the model wants MONAI's layout
    (``input.axes: ras``), resampled to the model spacing and windowed to [0, 1]."""
    if manifest.input.axes == "ras":
        volume = to_ras(volume)
    resampled = resample(volume, manifest.input.spacing_mm)
    return Volume(array=normalize_hu(resampled.array, manifest.input.window_hu), affine=resampled.affine)


def detect_in_grid(grid: Volume, model: LoadedModel | LoadedModelLike, *, batch_size: int = 1,
                   clock: _Stopwatch | None = None) -> list[Detection]:
    """Findings on a model-input grid (``model_input``): sliding-window inference, then post-processing
    (``inference.postprocess`` for per-voxel output, ``inference.box_postprocess`` for boxes)."""
    manifest, runner = model.manifest, model.predictor
    spec, out = manifest.input, manifest.output
    clock = clock or _Stopwatch()
    if out.kind == BOX_KIND:
        from inference.box_postprocess import detections_from_boxes  # imports monai.data

        if not isinstance(runner, BoxPredictor) or out.nms_iou is None:
            raise RunnerError(f"model {manifest.id} {manifest.version} declares boxes but its runner gives none")
        with clock.stage("inference"):
            boxes = sliding_window_boxes(runner, grid.array, patch_size=spec.patch_size, overlap=spec.overlap,
                                         divisible_by=spec.divisible_by)
        with clock.stage("postprocess"):
            return detections_from_boxes(boxes, grid, threshold=out.threshold, nms_iou=out.nms_iou,
                                         min_diameter_mm=out.min_diameter_mm, label=out.label.meaning)
    if not isinstance(runner, Predictor):
        raise RunnerError(f"model {manifest.id} {manifest.version} declares {out.kind} but its runner gives boxes")
    with clock.stage("inference"):
        output = sliding_window_predict(runner, grid.array, patch_size=spec.patch_size, overlap=spec.overlap,
                                        divisible_by=spec.divisible_by, batch_size=batch_size)
    with clock.stage("postprocess"):
        return detections_from_output(output, grid, threshold=out.threshold, min_diameter_mm=out.min_diameter_mm,
                                      kind="logits" if out.kind == "logits" else "probabilities",
                                      label=out.label.meaning)


def detect_in_volume(volume: Volume, model: LoadedModel | LoadedModelLike, *, batch_size: int = 1) -> list[Detection]:
    """Findings in an HU volume: ``model_input`` then ``detect_in_grid``.

    The one path from volume to findings: the service (``analyze_series``) and the training stage's
    evaluation both run it, so evaluation measures exactly what the service runs.
    """
    return detect_in_grid(model_input(volume, model.manifest), model, batch_size=batch_size)


def analyze_series(
    paths: Sequence[Path], model: LoadedModel, *, min_slices: int = MIN_SLICES, batch_size: int = 1
) -> AnalysisResult:
    """Analyse the instance files of one series with a loaded model.

    Raises ``SeriesError`` when the files do not form a clean volume, ``RunnerError`` when the
    model fails. Large intermediate arrays are released as soon as the next stage has its input.
    """
    clock = _Stopwatch()
    with clock.stage("read"):
        instances = read_instances(paths)
        input_sha256 = series_sha256(instances)
    with clock.stage("volume"):
        headers = [inst.dataset for inst in instances]
        geometry = stack_geometry(headers, min_slices)
        volume = build_volume(instances, min_slices, geometry=geometry)
        first = headers[geometry.order[0]]
        series_uid = str(first.get("SeriesInstanceUID", ""))
        frame_uid = str(first.get("FrameOfReferenceUID", ""))
        sop_uids = tuple(str(headers[n].get("SOPInstanceUID", "")) for n in geometry.order)
        del instances, headers, first
    with clock.stage("resample"):
        grid = model_input(volume, model.manifest)
        del volume
    detections = detect_in_grid(grid, model, batch_size=batch_size, clock=clock)
    del grid
    return AnalysisResult(
        series_instance_uid=series_uid,
        identity=model.identity,
        detections=tuple(detections),
        input_sha256=input_sha256,
        timings=clock.total(),
        frame_of_reference_uid=frame_uid,
        slice_sop_instance_uids=sop_uids,
        source_affine=tuple(tuple(float(v) for v in row) for row in geometry.affine),
    )


@dataclass(frozen=True)
class StudyOutcome:
    """The routing decision for a study and the analysis of the series it chose."""

    rule_name: str
    decision: RoutingDecision
    result: AnalysisResult
    skipped: dict[str, str] = field(default_factory=dict)


SeriesFiles = Mapping[str, Sequence[Path] | Sequence[tuple[Path, str]]]
# (model id, the routing rule's version or None) -> the version to run; the service answers from its
# model deployments (an admin's promotion), so a promotion takes effect at the next study.
VersionResolver = Callable[[str, str | None], str | None]


def _paths(files: Sequence[Path] | Sequence[tuple[Path, str]]) -> list[Path]:
    return [Path(f[0]) if isinstance(f, tuple) else Path(f) for f in files]


class Engine:
    """Routing rules + model registry + pipeline, built once per worker process.

    The rules and every manifest are validated here (start-up); each model is verified and
    loaded the first time a study needs it, then reused.
    """

    def __init__(self, models_dir: Path, routing_file: Path, threads: int = 1,
                 resolve_version: VersionResolver | None = None) -> None:
        self.registry = Registry(models_dir)
        self.router = Router.from_file(routing_file)
        self.threads = threads
        self.resolve_version = resolve_version
        for rule in self.router.rules.rules:
            try:
                self.registry.get(rule.model, rule.model_version)
            except LookupError as exc:
                raise RoutingError(f"routing rule {rule.name!r} cannot be used: {exc}") from exc

    def route_study(
        self, series: SeriesFiles, *, called_ae_title: str | None = None
    ) -> tuple[RoutingDecision | None, dict[str, str]]:
        """The routing decision for a study (series UID -> files), and why other series were skipped.

        ``called_ae_title``: the AE title the study was received on (None: unknown; then rules with
        ``called_ae_titles`` do not apply)."""
        headers: dict[str, list[Dataset]] = {}
        unreadable: dict[str, str] = {}
        for uid, files in series.items():
            try:
                headers[uid] = read_headers(_paths(files))
            except SeriesError as exc:
                unreadable[uid] = f"unreadable: {exc}"
        decision, skipped = self.router.evaluate(headers, called_ae_title=called_ae_title)
        return decision, {**skipped, **unreadable}

    def analyze_study(self, series: SeriesFiles, *, called_ae_title: str | None = None) -> StudyOutcome | None:
        """Route a study and analyse the chosen series; None when no rule fits any series.

        ``series`` maps SeriesInstanceUID to its files (paths, or (path, sha256) pairs);
        ``called_ae_title`` is the AE title the study was received on (see :meth:`route_study`).
        """
        decision, skipped = self.route_study(series, called_ae_title=called_ae_title)
        for uid, reason in skipped.items():
            log.info("routing.series_skipped series=%s reason=%s", uid, reason)
        if decision is None:
            return None
        version = decision.model_version
        if self.resolve_version is not None:
            version = self.resolve_version(decision.model_id, version)
        model = self.load_model(decision.model_id, version)
        result = analyze_series(_paths(series[decision.series_instance_uid]), model)
        return StudyOutcome(rule_name=decision.rule_name, decision=decision, result=result, skipped=skipped)

    def load_model(self, model_id: str, version: str | None = None) -> LoadedModel:
        """A verified, loaded model; a version registered after start-up is found by scanning again."""
        try:
            return self.registry.load(model_id, version, threads=self.threads)
        except ModelNotFoundError:
            self.registry.refresh()
            return self.registry.load(model_id, version, threads=self.threads)
