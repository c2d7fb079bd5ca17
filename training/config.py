"""Training configuration: a YAML file validated into typed, frozen models."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Frozen):
    features: tuple[int, int, int] = (16, 32, 64)


class PhantomConfig(_Frozen):
    """How the synthetic training phantoms are drawn (each one deterministic by its seed)."""

    fov_mm: float = 360.0  # in-plane field of view
    z_extent_mm: float = 300.0
    inplane_spacing_mm: tuple[float, float] = (0.65, 0.9)  # uniform range
    slice_spacing_mm: tuple[float, float] = (1.0, 2.5)
    nodules_per_phantom: tuple[int, int] = (5, 9)  # inclusive range
    nodule_diameter_mm: tuple[float, float] = (3.0, 30.0)  # range of diameters
    # How sizes and kinds are drawn: "log-uniform" sizes in the range with kinds by ``kind_weights``, or
    # "lidc": sizes and kinds together from the LIDC-IDRI annotation table (training.nodule_mix).
    size_mix: Literal["log-uniform", "lidc"] = "log-uniform"
    kind_weights: tuple[float, float, float] = (0.5, 0.25, 0.25)  # solid, part-solid, ground-glass
    noise_sigma_hu: tuple[float, float] = (15.0, 45.0)


class DataConfig(_Frozen):
    spacing_mm: tuple[float, float, float] = (1.25, 1.25, 1.25)  # model voxel size along i, j, k
    window_hu: tuple[float, float] = (-1000.0, 400.0)
    train_phantoms: int = Field(default=48, ge=1)
    val_phantoms: int = Field(default=2, ge=1)
    seed_offset: int = 10_000  # training phantom seeds are seed_offset + n; validation adds 500_000
    phantom: PhantomConfig = PhantomConfig()


class SamplingConfig(_Frozen):
    patch_size: tuple[int, int, int] = (64, 64, 64)  # k, j, i
    nodule_fraction: float = Field(default=0.5, ge=0.0, le=1.0)  # patches containing a nodule
    vessel_fraction: float = Field(default=0.2, ge=0.0, le=1.0)  # patches centred on a vessel
    flip: bool = True
    # Loss weight of a nodule's voxels: (reference / diameter)^3, clipped to [1, max]; None: all 1.
    small_nodule_reference_mm: float | None = None
    small_nodule_max_weight: float = Field(default=20.0, ge=1.0)


class TrainConfig(_Frozen):
    name: str = "run"
    seed: int = 0
    threads: int = 2
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    sampling: SamplingConfig = SamplingConfig()
    batch_size: int = Field(default=4, ge=1)
    steps: int = Field(default=3000, ge=1)
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    dice_weight: float = 1.0
    dice_per_patch: bool = False  # Dice per patch (small nodules count as much as big ones) or per batch
    log_every: int = Field(default=10, ge=1)
    checkpoint_every: int = Field(default=100, ge=1)
    val_every: int = Field(default=200, ge=1)
    val_patches: int = Field(default=24, ge=1)
    threshold: float = 0.5  # operating point written into the manifest
    # Start from these weights instead of from scratch: a model folder (its ONNX weights; BatchNorm then
    # stays frozen) or a training checkpoint (.pt), relative to the config file's folder.
    init_from: str | None = None
    # BatchNorm in eval mode while training: None freezes it when starting from a model folder (its ONNX
    # weights carry no batch statistics); set true to keep it frozen when continuing from such a run's .pt.
    freeze_batchnorm: bool | None = None

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.sampling.nodule_fraction + self.sampling.vessel_fraction > 1.0:
            raise ValueError("sampling.nodule_fraction + sampling.vessel_fraction must be <= 1")
        if any(p % 8 for p in self.sampling.patch_size):
            raise ValueError("sampling.patch_size must be divisible by 8 (the network stride)")
        return self


def load_config(path: Path) -> TrainConfig:
    """Read and validate a training configuration."""
    data = yaml.safe_load(Path(path).read_text()) or {}
    return TrainConfig.model_validate(data)
