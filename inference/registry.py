"""The model registry: ``models/<id>/<version>/manifest.yaml``, verified and loaded once.

``Registry`` scans the folder at construction (every manifest validated, so a bad one fails at
start-up); ``get`` picks a version (newest by semantic version unless one is named); ``verify``
recomputes the sha256 of every listed file; ``load`` verifies and builds the runner once per
model version and hands out the same ``LoadedModel`` afterwards.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path

from inference.manifest import BOX_KIND, MANIFEST_NAME, Manifest, ManifestError, load_manifest, version_key
from inference.runners import (
    ModelRunner,
    OnnxBoxPredictor,
    OnnxPredictor,
    Predictor,
    TorchBoxPredictor,
    TorchScriptPredictor,
    default_device,
    in_xyz,
    load_torchscript,
)
from tamsoat.core.domain import ModelIdentity

_CHUNK = 1 << 20


class ModelNotFoundError(LookupError):
    """No registered model has the requested id or version."""


class ModelIntegrityError(RuntimeError):
    """A model file is missing or its content differs from the manifest's sha256."""


@dataclass(frozen=True)
class RegisteredModel:
    """A manifest and the folder it lives in."""

    manifest: Manifest
    directory: Path

    @property
    def identity(self) -> ModelIdentity:
        return self.manifest.identity()

    @property
    def model_path(self) -> Path:
        return self.directory / self.manifest.model_file


@dataclass(frozen=True)
class LoadedModel:
    """A verified model, ready to run: its manifest, its identity and its runner (per-voxel or boxes)."""

    manifest: Manifest
    identity: ModelIdentity
    predictor: ModelRunner


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify_files(model: RegisteredModel) -> None:
    """Recompute the sha256 of every file the manifest lists; raise on the first difference."""
    label = f"model {model.manifest.id} {model.manifest.version}"
    for name, expected in model.manifest.files.items():
        path = model.directory / name
        if not path.is_file():
            raise ModelIntegrityError(f"{label}: file {name} listed in the manifest is missing")
        actual = file_sha256(path)
        if actual != expected:
            raise ModelIntegrityError(
                f"{label}: file {name} has sha256 {actual}, but the manifest says {expected}"
            )


class Registry:
    """The models under ``models_dir``, keyed by id and version."""

    def __init__(self, models_dir: Path) -> None:
        self.models_dir = Path(models_dir)
        self._models: dict[str, dict[str, RegisteredModel]] = {}
        self._loaded: dict[tuple[str, str, int], LoadedModel] = {}
        self._lock = threading.Lock()
        self._scan()

    def _scan(self) -> None:
        if not self.models_dir.is_dir():
            raise ManifestError(f"models folder {self.models_dir} does not exist")
        for path in sorted(self.models_dir.glob(f"*/*/{MANIFEST_NAME}")):
            manifest = load_manifest(path)
            model_dir = path.parent
            if (manifest.id, manifest.version) != (model_dir.parent.name, model_dir.name):
                raise ManifestError(
                    f"manifest {path} declares {manifest.id} {manifest.version} but lives in "
                    f"{model_dir.parent.name}/{model_dir.name}"
                )
            self._models.setdefault(manifest.id, {})[manifest.version] = RegisteredModel(manifest, model_dir)

    def refresh(self) -> None:
        """Scan the folder again, for versions registered since (models already loaded stay loaded)."""
        fresh = Registry(self.models_dir)
        self._models = fresh._models  # one assignment: readers see the old or the new mapping, never half

    def model_ids(self) -> list[str]:
        return sorted(self._models)

    def versions(self, model_id: str) -> list[str]:
        """The registered versions of ``model_id``, oldest first."""
        return sorted(self._models.get(model_id, {}), key=version_key)

    def get(self, model_id: str, version: str | None = None) -> RegisteredModel:
        """The named version of ``model_id``, or its newest one."""
        versions = self._models.get(model_id)
        if not versions:
            known = ", ".join(self.model_ids()) or "none"
            raise ModelNotFoundError(f"no model {model_id!r} in {self.models_dir} (registered: {known})")
        if version is None:
            return versions[self.versions(model_id)[-1]]
        if version not in versions:
            raise ModelNotFoundError(
                f"model {model_id!r} has no version {version!r} (registered: {', '.join(self.versions(model_id))})"
            )
        return versions[version]

    def verify(self, model_id: str, version: str | None = None) -> RegisteredModel:
        """Check the files of a model against its manifest; return it when they match."""
        model = self.get(model_id, version)
        verify_files(model)
        return model

    def load(self, model_id: str, version: str | None = None, threads: int = 1) -> LoadedModel:
        """Verify and load a model once; later calls return the same ``LoadedModel``. Thread-safe."""
        model = self.get(model_id, version)
        key = (model.manifest.id, model.manifest.version, threads)
        with self._lock:
            loaded = self._loaded.get(key)
            if loaded is None:
                verify_files(model)
                loaded = LoadedModel(
                    manifest=model.manifest,
                    identity=model.identity,
                    predictor=create_runner(model, threads),
                )
                self._loaded[key] = loaded
        return loaded


def create_runner(model: RegisteredModel, threads: int = 1, device: str | None = None) -> ModelRunner:
    """The runner for the manifest's runtime and output kind; ``device`` (``cpu``/``cuda``) defaults to a
    GPU when present. A model with ``input.axes: ras`` gets its patches in MONAI's (x, y, z) order."""
    runner = _runner(model, threads, device)
    return in_xyz(runner) if model.manifest.input.axes == "ras" else runner


def create_predictor(model: RegisteredModel, threads: int = 1, device: str | None = None) -> Predictor:
    """``create_runner`` for a per-voxel model; a box detector is refused."""
    runner = create_runner(model, threads, device)
    if not isinstance(runner, Predictor):
        raise ManifestError(f"model {model.manifest.id} {model.manifest.version} outputs boxes, not a per-voxel map")
    return runner


def _runner(model: RegisteredModel, threads: int, device: str | None) -> ModelRunner:
    if model.manifest.output.kind == BOX_KIND:
        return _box_runner(model, threads, device)
    manifest = model.manifest
    cpu, gpu = manifest.precision.cpu, manifest.precision.gpu
    if manifest.runtime == "onnx":
        return OnnxPredictor(model.model_path, threads=threads, providers=_onnx_providers(device))
    if manifest.runtime == "torchscript":
        return TorchScriptPredictor(model.model_path, threads=threads, device=device, cpu_precision=cpu,
                                    gpu_precision=gpu)
    if manifest.runtime == "monai-bundle":
        from inference.runners.bundle_predictor import BundlePredictor  # imports monai.bundle

        return BundlePredictor(model.model_path, trusted=manifest.trusted, threads=threads, device=device,
                               cpu_precision=cpu, gpu_precision=gpu)
    raise ManifestError(f"runtime {manifest.runtime!r} is not supported")  # pragma: no cover


def _box_runner(model: RegisteredModel, threads: int, device: str | None) -> ModelRunner:
    manifest, output = model.manifest, model.manifest.output
    cpu, gpu = manifest.precision.cpu, manifest.precision.gpu
    if manifest.runtime == "monai-bundle" and output.nms_iou is not None:  # the manifest requires nms_iou
        from inference.runners.detection_bundle import DetectionBundlePredictor  # imports monai.apps.detection

        return DetectionBundlePredictor(model.model_path, score_threshold=output.threshold, nms_iou=output.nms_iou,
                                        trusted=manifest.trusted, threads=threads, device=device, cpu_precision=cpu,
                                        gpu_precision=gpu)
    if manifest.runtime == "torchscript":
        device = device or default_device()
        return TorchBoxPredictor(load_torchscript(model.model_path, device), box_mode=output.corner_mode,
                                 source=str(model.model_path), device=device, threads=threads, cpu_precision=cpu,
                                 gpu_precision=gpu)
    if manifest.runtime == "onnx":
        return OnnxBoxPredictor(model.model_path, box_mode=output.corner_mode, threads=threads,
                                providers=_onnx_providers(device))
    raise ManifestError(f"runtime {manifest.runtime!r} cannot run a box detector")  # pragma: no cover


def _onnx_providers(device: str | None) -> list[str] | None:
    """``device="cpu"`` pins ONNX Runtime to the CPU; otherwise CUDA first when present."""
    return ["CPUExecutionProvider"] if device == "cpu" else None
