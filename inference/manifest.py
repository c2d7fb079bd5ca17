"""The model manifest: what a model is, what input it wants, how to read its output.

A manifest is data (``models/<id>/<version>/manifest.yaml``), validated when it is loaded. Every
error names the file and the field, in one sentence each.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tamsoat.core.domain import ModelIdentity

MANIFEST_NAME = "manifest.yaml"
SEMVER_PATTERN = (
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*)(?:\.(?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*))*))?"
    r"(?:\+([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?$"
)
_SEMVER = re.compile(SEMVER_PATTERN)
MODEL_ID_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
DICOM_UID_PATTERN = r"^(0|[1-9]\d*)(\.(0|[1-9]\d*))+$"
SHA256_PATTERN = r"^[0-9a-f]{64}$"

PositiveFloat = Annotated[float, Field(gt=0)]
PositiveInt = Annotated[int, Field(gt=0)]
Sha256 = Annotated[str, Field(pattern=SHA256_PATTERN)]


class ManifestError(ValueError):
    """A manifest cannot be used; the message names the file and says why."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(_Strict):
    """What the model expects: ``normalize_hu(resample(volume, spacing_mm).array, window_hu)``."""

    spacing_mm: tuple[PositiveFloat, PositiveFloat, PositiveFloat] = Field(
        description="voxel size along i (columns), j (rows), k (slices), mm"
    )
    window_hu: tuple[float, float] = Field(description="(low, high) HU mapped to [0, 1]")
    patch_size: tuple[PositiveInt, PositiveInt, PositiveInt] = Field(
        description="sliding-window patch along k, j, i (voxels)"
    )
    divisible_by: PositiveInt = Field(default=1, description="every input dimension must be a multiple")
    overlap: float = Field(default=0.25, ge=0.0, lt=1.0, description="sliding-window overlap fraction")
    axes: Literal["kji", "ras"] = Field(
        default="kji",
        description="kji: the array as the series is stacked, [slice, row, column]; ras: MONAI's layout after "
        "Orientationd(axcodes='RAS'), array (x, y, z) with x to the patient's right, y anterior, z superior",
    )

    @field_validator("window_hu")
    @classmethod
    def _window_increasing(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not v[0] < v[1]:
            raise ValueError(f"window_hu low ({v[0]}) must be below high ({v[1]})")
        return v

    @model_validator(mode="after")
    def _patch_divisible(self) -> InputSpec:
        bad = [p for p in self.patch_size if p % self.divisible_by]
        if bad:
            raise ValueError(f"patch_size {list(self.patch_size)} is not divisible by {self.divisible_by}")
        return self


class CodeSpec(_Strict):
    """A coded concept (DICOM code sequence item)."""

    scheme: str = Field(min_length=1, max_length=16)
    value: str = Field(min_length=1, max_length=64)
    meaning: str = Field(min_length=1, max_length=64)


# MONAI's 3-D box modes (``monai.data.box_utils``): corners (xyzxyz, xxyyzz, xyxyzz), corner + size
# (xyzwhd) or centre + size (cccwhd); x, y, z are the model input's array axes, in voxels.
BoxMode = Literal["xyzxyz", "xxyyzz", "xyxyzz", "xyzwhd", "cccwhd"]
BOX_KIND = "boxes"


class OutputSpec(_Strict):
    """How to turn the model output into findings.

    ``logits``/``probabilities``: a ``(1, 1, D, H, W)`` per-voxel map, same size as the input,
    thresholded into connected blobs (``inference.postprocess``). ``boxes``: boxes with scores
    (``inference.box_postprocess``): ``threshold`` applies to the score, ``nms_iou`` merges boxes
    across sliding-window patches, ``box_mode`` says how the model writes a box.
    """

    kind: Literal["logits", "probabilities", "boxes"] = Field(
        description="per-voxel logits or probabilities (same size as the input), or boxes with scores"
    )
    threshold: float = Field(gt=0.0, lt=1.0, description="on the probability (boxes: on the score)")
    min_diameter_mm: float = Field(default=0.0, ge=0.0)
    label: CodeSpec
    box_mode: BoxMode | None = Field(default=None, description="boxes only: how the model writes a box "
                                     "(default xyzxyz, MONAI's corner form)")
    nms_iou: float | None = Field(default=None, gt=0.0, le=1.0,
                                  description="boxes only (required): boxes overlapping more are merged")

    @model_validator(mode="after")
    def _box_fields_match_kind(self) -> OutputSpec:
        if self.kind == BOX_KIND:
            if self.nms_iou is None:
                raise ValueError("kind boxes needs nms_iou (the IoU above which overlapping boxes are merged)")
        else:
            extra = [name for name in ("box_mode", "nms_iou") if getattr(self, name) is not None]
            if extra:
                raise ValueError(f"{' and '.join(extra)} apply to kind boxes only, not {self.kind}")
        return self

    @property
    def corner_mode(self) -> BoxMode:
        """The box mode the model writes (``box_mode``, or MONAI's corner form xyzxyz)."""
        return self.box_mode or "xyzxyz"


Runtime = Literal["onnx", "torchscript", "monai-bundle"]
# The model file each runtime loads when the manifest names no entrypoint.
_DEFAULT_ENTRYPOINT = {
    "onnx": (".onnx", lambda n: n.endswith(".onnx")),
    "torchscript": (".pt or .ts", lambda n: n.endswith((".pt", ".ts"))),
    "monai-bundle": ("models/model.pt", lambda n: n == "models/model.pt" or n.endswith("/models/model.pt")),
}


class PrecisionSpec(_Strict):
    """Arithmetic precision per device for the PyTorch runtimes (TorchScript, MONAI bundle).

    ``cpu: bf16`` and ``gpu: fp16`` run the model under ``torch.autocast``; the output is float32
    either way. ONNX models run as exported (fp32), so an ONNX manifest must keep ``cpu: fp32``.
    """

    cpu: Literal["fp32", "bf16"] = "fp32"
    gpu: Literal["fp32", "fp16"] = "fp16"


class Manifest(_Strict):
    """A model manifest (``manifest.yaml``).

    ``runtime`` picks the runner: ``onnx`` (ONNX Runtime), ``torchscript`` (``torch.jit.load``) or
    ``monai-bundle`` (a bundle folder: ``configs/inference.json`` with ``network_def`` and
    ``models/model.pt``, a state dict; with ``output.kind: boxes`` also ``anchor_generator``, run
    through MONAI's ``RetinaNetDetector``). A bundle's configuration may only evaluate expressions
    (``$...``) when ``trusted`` is true; see ``inference.runners.bundle_predictor``.
    """

    id: str = Field(pattern=MODEL_ID_PATTERN)
    version: str = Field(pattern=SEMVER_PATTERN)
    name: str = Field(min_length=1, max_length=64)
    manufacturer: str = Field(min_length=1, max_length=64)
    device_uid: str = Field(pattern=DICOM_UID_PATTERN, max_length=64)
    task: Literal["lung-nodule-detection"]
    intended_use: str = Field(min_length=1)
    runtime: Runtime
    trusted: bool = Field(
        default=False, description="monai-bundle only: allow the bundle's config to evaluate Python expressions"
    )
    precision: PrecisionSpec = Field(default_factory=PrecisionSpec)
    input: InputSpec
    output: OutputSpec
    files: dict[str, Sha256] = Field(min_length=1, description="file name -> sha256 (hex)")
    entrypoint: str | None = Field(
        default=None, description="the model file among `files`; default: the only *.onnx file"
    )

    @field_validator("files")
    @classmethod
    def _plain_names(cls, v: dict[str, str]) -> dict[str, str]:
        for name in v:
            p = Path(name)
            if p.is_absolute() or ".." in p.parts or not name.strip():
                raise ValueError(f"file name {name!r} must be a relative path inside the model folder")
        return v

    @model_validator(mode="after")
    def _entrypoint_known(self) -> Manifest:
        if self.entrypoint is not None:
            if self.entrypoint not in self.files:
                raise ValueError(f"entrypoint {self.entrypoint!r} is not listed in files")
        else:
            what, fits = _DEFAULT_ENTRYPOINT[self.runtime]
            candidates = [n for n in self.files if fits(n)]
            if len(candidates) != 1:
                raise ValueError(
                    f"files must list exactly one {what} file (found {len(candidates)}) for runtime "
                    f"{self.runtime}, or name the entrypoint"
                )
        if self.trusted and self.runtime != "monai-bundle":
            raise ValueError("trusted applies to monai-bundle models only")
        if self.precision.cpu != "fp32" and self.runtime == "onnx":
            raise ValueError("precision.cpu bf16 needs a PyTorch runtime (torchscript or monai-bundle), not onnx")
        bundle_boxes = self.output.kind == BOX_KIND and self.runtime == "monai-bundle"
        if bundle_boxes and self.output.corner_mode != "xyzxyz":
            raise ValueError(
                "a monai-bundle box detector runs through MONAI's RetinaNetDetector, which gives xyzxyz boxes: "
                f"remove output.box_mode {self.output.box_mode} (the bundle's own post-processing is not run)"
            )
        return self

    @property
    def model_file(self) -> str:
        """The file name of the model the runtime loads (for a bundle: its ``models/model.pt``)."""
        if self.entrypoint is not None:
            return self.entrypoint
        fits = _DEFAULT_ENTRYPOINT[self.runtime][1]
        return next(n for n in self.files if fits(n))

    @property
    def weights_sha256(self) -> str:
        return self.files[self.model_file]

    def identity(self) -> ModelIdentity:
        """What identifies this algorithm in findings and reports."""
        return ModelIdentity(
            model_id=self.id,
            version=self.version,
            name=self.name,
            manufacturer=self.manufacturer,
            device_uid=self.device_uid,
            weights_sha256=self.weights_sha256,
        )


def version_key(version: str) -> tuple[int, int, int, int, tuple[tuple[int, int, str], ...]]:
    """A sort key that orders semantic versions (``1.0.0-rc.1 < 1.0.0 < 1.0.1``); build metadata is ignored."""
    m = _SEMVER.match(version)
    if m is None:
        raise ManifestError(f"{version!r} is not a semantic version (MAJOR.MINOR.PATCH)")
    major, minor, patch, pre = int(m[1]), int(m[2]), int(m[3]), m[4]
    if pre is None:
        return major, minor, patch, 1, ()
    # Numeric identifiers sort numerically and before alphanumeric ones (SemVer 2.0.0, rule 11).
    ids = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split("."))
    return major, minor, patch, 0, ids


_PATTERN_NAMES = {
    SEMVER_PATTERN: "a semantic version (MAJOR.MINOR.PATCH, e.g. 0.1.0)",
    MODEL_ID_PATTERN: "a model id (lower-case letters, digits, '.', '_', '-'; at most 64)",
    DICOM_UID_PATTERN: "a DICOM UID (numbers separated by dots, e.g. 2.25.1234)",
    SHA256_PATTERN: "a sha256 digest (64 lower-case hex digits)",
}


def error_message(err: Mapping[str, Any]) -> str:
    """One pydantic error as a short sentence (patterns are named, not printed)."""
    if err.get("type") == "string_pattern_mismatch":
        pattern = err.get("ctx", {}).get("pattern", "")
        return f"{err.get('input')!r} is not {_PATTERN_NAMES.get(pattern, 'in the expected form')}"
    return str(err["msg"]).removeprefix("Value error, ")


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(x) for x in err["loc"]) or "(top level)"
        parts.append(f"{where}: {error_message(err)}")
    return "; ".join(parts)


def parse_manifest(data: object, source: str = "manifest") -> Manifest:
    """Validate already-parsed manifest data; ``source`` names it in error messages."""
    if not isinstance(data, dict):
        raise ManifestError(f"{source} must be a mapping of fields, not {type(data).__name__}")
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        raise ManifestError(f"{source} is invalid: {_describe(exc)}") from exc


def load_manifest(path: Path) -> Manifest:
    """Read and validate a ``manifest.yaml``."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ManifestError(f"cannot read manifest {path}: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ManifestError(f"manifest {path} is not valid YAML: {exc}") from exc
    return parse_manifest(data, source=f"manifest {path}")
