"""Retrain or fine-tune the nodule network from a research snapshot (``training.snapshot``), with phantoms.

A research configuration is a training configuration (``training.config.TrainConfig``) plus a ``research``
section::

    research:
      snapshot: ../../snapshots/snapshot-2026...   # relative to this file; or given to ``finetune``
      snapshot_split: train      # train | test | all
      init_from: ../../models/lung-nodule-phantom/0.1.0   # a model folder (ONNX-start weights) or a .pt
      snapshot_repeat: 4         # a snapshot case is drawn as often as this many phantoms
      use_phantoms: true         # keep training on the synthetic phantoms too (against forgetting)
      freeze_batchnorm: true     # BatchNorm in eval mode while fine-tuning

**Starting weights** (``training.warm_start``). A shipped model ships its ONNX file, not its checkpoint. ONNX
export folds each convolution's BatchNorm into the convolution, so ``network_from_onnx`` rebuilds the
network with those folded weights and identity BatchNorm (mean 0, variance 1 - eps, scale 1, shift = the
folded bias); the rebuilt network reproduces the ONNX output (checked on every load). Fine-tuning then
keeps BatchNorm in eval mode, the usual choice for small-batch fine-tuning, so the network starts exactly
where the shipped model is. A ``.pt`` checkpoint (``training.train``) may be given instead; without
``init_from`` the network is trained from scratch.

**Data.** Snapshot cases go through the same pre-processing as phantoms and as the service
(``inference.preprocess`` via ``training.dataset.preprocess``) at the parent model's spacing and window.
Positives become labelled nodules (equivalent spheres); hard negatives (rejected AI findings) become
patch centres drawn with the vessel share of patches, so the network sees what radiologists rejected.

The checkpoints are ``training.train``'s (``training.export`` exports them); ``lineage.json`` records the
parent model, the snapshot (id, manifest sha256, counts) and the run.
"""

from __future__ import annotations

import json
import shutil
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field

from training.config import TrainConfig
from training.dataset import Case, PatchSampler, build_cache, candidate_points, load_case, preprocess
from training.export import export_onnx
from training.snapshot import Snapshot, SnapshotCase, read_snapshot
from training.train import (
    BEST,
    LAST,
    Loss,
    MetricsLog,
    evaluate_patches,
    lr_lambda,
    save_checkpoint,
    train_seeds,
    train_step,
    val_seeds,
)
from training.warm_start import freeze_batchnorm, starting_network

LINEAGE = "lineage.json"


class ResearchOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    snapshot: str | None = None
    snapshot_split: str = Field(default="train", pattern=r"^(train|test|all)$")
    init_from: str | None = None
    snapshot_repeat: int = Field(default=4, ge=1, le=100)
    use_phantoms: bool = True
    freeze_batchnorm: bool = True
    hard_negative_share: float = Field(default=0.5, ge=0.0, le=1.0,
                                       description="of a snapshot case's vessel-patch centres, the share on "
                                                   "rejected AI findings")


class ResearchConfig(BaseModel):
    model_config = ConfigDict(frozen=True)

    train: TrainConfig
    research: ResearchOptions
    source: Path

    def resolve(self, value: str | None) -> Path | None:
        """A path from the config, relative to the config file's folder."""
        if not value:
            return None
        p = Path(value).expanduser()
        return p if p.is_absolute() else (self.source.parent / p).resolve()


def load_research_config(path: Path) -> ResearchConfig:
    data = yaml.safe_load(Path(path).read_text()) or {}
    research = data.pop("research", {}) or {}
    return ResearchConfig(train=TrainConfig.model_validate(data), research=ResearchOptions.model_validate(research),
                          source=Path(path).resolve())


# --- snapshot cases ----------------------------------------------------------------------------------------

def prepare_snapshot_case(case: SnapshotCase, snapshot_id: str, cfg: TrainConfig, cache_dir: Path,
                          hard_negative_share: float = 0.5) -> Path:
    """Pre-process one snapshot case onto the model grid and cache it as ``training.dataset`` caches phantoms."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    stem = f"snap_{snapshot_id}_{case.case_id}"
    meta_path, image_path = cache_dir / f"{stem}.npz", cache_dir / f"{stem}.npy"
    if meta_path.exists() and image_path.exists():
        return meta_path
    image, grid = preprocess(case.load_volume(), cfg.data)
    spacing_kji = np.array(grid.spacing[::-1])
    positives = case.positives
    centers = np.array([grid.patient_to_index(p.center_mm)[::-1] for p in positives]).reshape(-1, 3)
    diameters = np.array([p.diameter_mm for p in positives], dtype=np.float64)
    radii = diameters[:, None] / 2.0 / spacing_kji[None, :]
    rng = np.random.default_rng([zlib.crc32(stem.encode()), 11])
    lung_pts, vessel_pts = candidate_points(image, cfg.data.window_hu, rng)
    if len(vessel_pts) and len(centers):
        d = (vessel_pts[:, None, :] - centers[None, :, :]) / np.maximum(radii[None], 1e-6)
        vessel_pts = vessel_pts[np.all(np.sum(d * d, axis=2) > 1.5**2, axis=1)]
    shape = np.array(image.shape)
    hard = np.array([np.clip(np.rint(grid.patient_to_index(n.center_mm)[::-1]), 0, shape - 1)
                     for n in case.hard_negatives], dtype=np.int64).reshape(-1, 3)
    if len(hard) and hard_negative_share > 0:
        # Repeat them so that they make up ``hard_negative_share`` of the centres drawn from this list.
        want = max(len(hard), round(hard_negative_share / max(1e-6, 1 - hard_negative_share) * len(vessel_pts)))
        hard = hard[np.arange(want) % len(hard)]
        vessel_pts = np.concatenate([hard, vessel_pts]) if hard_negative_share < 1 else hard
    tmp = image_path.with_suffix(".tmp.npy")
    np.save(tmp, image.astype(np.float16))
    np.savez(meta_path.with_suffix(".tmp.npz"), centers_kji=centers, radii_kji=radii, diameters_mm=diameters,
             lung_points=lung_pts, vessel_points=vessel_pts, affine=grid.affine)
    tmp.replace(image_path)
    meta_path.with_suffix(".tmp.npz").replace(meta_path)
    return meta_path


def snapshot_cases(snapshot: Snapshot, cfg: TrainConfig, cache_dir: Path, *, split: str = "train",
                   hard_negative_share: float = 0.5, log: Callable[[str], None] = print) -> list[Case]:
    out = []
    for case in snapshot.split(split):
        log(f"snapshot case {case.case_id}: {len(case.positives)} positives, {len(case.hard_negatives)} "
            "hard negatives")
        out.append(load_case(prepare_snapshot_case(case, snapshot.snapshot_id, cfg, cache_dir, hard_negative_share)))
    return out


# --- the run ---------------------------------------------------------------------------------------------

def finetune(config_path: Path, out_dir: Path, *, snapshot: Path | None = None, init_from: Path | None = None,
             steps: int | None = None, log: Callable[[str], None] | None = None) -> Path:
    """Train as the research config says, into ``out_dir``; return the best checkpoint's path.

    ``snapshot``, ``init_from`` and ``steps`` override the config. Writes ``config.yaml``, ``metrics.jsonl``,
    ``checkpoint_last.pt``, ``checkpoint_best.pt`` (``training.train``'s format) and ``lineage.json``.
    """
    rc = load_research_config(config_path)
    opts = rc.research
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    say = log or (lambda m: print(f"[finetune] {m}", flush=True))
    snap_path = Path(snapshot) if snapshot else rc.resolve(opts.snapshot)
    init = Path(init_from) if init_from else rc.resolve(opts.init_from)
    cfg = rc.train if steps is None else rc.train.model_copy(update={"steps": int(steps)})
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    net, cfg, parent, how = starting_network(init, cfg)
    freeze = opts.freeze_batchnorm and init is not None
    (out_dir / "config.yaml").write_text(yaml.safe_dump(
        {**cfg.model_dump(mode="json"), "research": {**opts.model_dump(mode="json"),
                                                    "snapshot": str(snap_path) if snap_path else None,
                                                    "init_from": str(init) if init else None}}, sort_keys=False))
    cache = out_dir / "cache"
    cases: list[Case] = []
    snap: Snapshot | None = None
    snap_cases: list[Case] = []
    if snap_path is not None:
        snap = read_snapshot(snap_path)
        snap_cases = snapshot_cases(snap, cfg, cache, split=opts.snapshot_split,
                                    hard_negative_share=opts.hard_negative_share, log=say)
        cases += snap_cases * opts.snapshot_repeat
    if opts.use_phantoms:
        say(f"preparing {cfg.data.train_phantoms} training phantoms")
        cases += build_cache(cfg.data, cache, train_seeds(cfg), log=say)
    if not cases:
        raise ValueError("nothing to train on: give a snapshot with cases in the split, or use_phantoms: true")
    val_cases = build_cache(cfg.data, cache, val_seeds(cfg), log=say)
    val_sampler = PatchSampler(val_cases, cfg.sampling.model_copy(update={"flip": False}),
                               np.random.default_rng([cfg.seed, 2]))
    vx, vy, _ = val_sampler.batch(cfg.val_patches)
    val_images, val_labels = torch.from_numpy(vx), torch.from_numpy(vy)
    rng = np.random.default_rng([cfg.seed, 1])
    sampler = PatchSampler(cases, cfg.sampling, rng)
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    loss_fn = Loss(cfg.dice_weight, cfg.dice_per_patch)
    metrics_log = MetricsLog(out_dir / "metrics.jsonl", keep_until_step=None)
    research_info = {"snapshot": snap.snapshot_id if snap else None, "parent": parent, "how": how}
    step, best = 0, -1.0
    t0 = time.monotonic()

    def checkpoint(path: Path) -> None:
        save_checkpoint(path, model=net.state_dict(), optimizer=optimizer.state_dict(),
                        scheduler=scheduler.state_dict(), rng=rng.bit_generator.state, torch_rng=torch.get_rng_state(),
                        step=step, best=best, elapsed_s=time.monotonic() - t0, config=cfg.model_dump(mode="json"),
                        research=research_info)

    def set_mode() -> None:
        net.train()
        if freeze:
            freeze_batchnorm(net)

    set_mode()
    window: list[dict[str, float]] = []
    say(f"{how}; {len(snap_cases)} snapshot cases x{opts.snapshot_repeat}, "
        f"{len(cases) - len(snap_cases) * opts.snapshot_repeat} phantoms; {cfg.steps} steps")
    while step < cfg.steps:
        window.append(train_step(net, sampler, loss_fn, optimizer, scheduler, cfg.batch_size))
        step += 1
        if step % cfg.log_every == 0 or step == cfg.steps:
            mean = {k: float(np.mean([p[k] for p in window])) for k in window[0]}
            window = []
            metrics_log({"step": step, **mean, "lr": scheduler.get_last_lr()[0],
                         "elapsed_s": round(time.monotonic() - t0, 1)})
            say(f"step {step}/{cfg.steps} loss {mean['loss']:.4f}")
        if step % cfg.val_every == 0 or step == cfg.steps:
            metrics = evaluate_patches(net, val_images, val_labels, loss_fn, cfg.threshold, cfg.batch_size)
            set_mode()  # evaluate_patches leaves the network in train mode, BatchNorm included
            improved = metrics["val_dice"] > best
            best = max(best, metrics["val_dice"])
            metrics_log({"step": step, **metrics, "best": best})
            say(f"validation at step {step}: dice {metrics['val_dice']:.4f}" + (" (best)" if improved else ""))
            if improved:
                checkpoint(out_dir / BEST)
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            checkpoint(out_dir / LAST)
    if not (out_dir / BEST).exists():
        checkpoint(out_dir / BEST)
    counts = snap.manifest.get("counts", {}) if snap else {}
    lineage = {
        "parent": parent, "init": how, "phantoms": opts.use_phantoms,
        "snapshot": None if snap is None else {
            "id": snap.snapshot_id, "manifest_sha256": _sha256(snap.path / "manifest.json"),
            "split": opts.snapshot_split, "cases": len(snap_cases), "positives": counts.get("positives"),
            "hard_negatives": counts.get("hard_negatives")},
        "steps": step, "best_val_dice": round(best, 4), "config": Path(config_path).name,
        "wall_s": round(time.monotonic() - t0, 1),
    }
    (out_dir / LINEAGE).write_text(json.dumps(lineage, indent=1) + "\n")
    say(f"done: {step} steps, best validation Dice {best:.4f}")
    return out_dir / BEST


def _sha256(path: Path) -> str:
    from training.snapshot import sha256_file

    return sha256_file(path)


def export_candidate(run_dir: Path, out_dir: Path, *, model_id: str, version: str) -> Path:
    """Export a run's best checkpoint as a model folder (ONNX, manifest, card) with the run's lineage.

    The folder is a candidate: ``training.register.register_model`` (or ``tamsoat models register``) makes it a
    registered version with its own Device UID.
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    lineage = json.loads((run_dir / LINEAGE).read_text()) if (run_dir / LINEAGE).is_file() else {}
    notes = []
    if lineage.get("snapshot"):
        notes.append(f"Fine-tuning data: research snapshot {lineage['snapshot']['id']} "
                     f"({lineage['snapshot']['cases']} cases)" + (" plus phantoms" if lineage.get("phantoms") else ""))
    if lineage.get("parent"):
        notes.append(f"Parent: {lineage['parent'].get('id')} {lineage['parent'].get('version')}; {lineage['init']}")
    model = export_onnx(run_dir / BEST, out_dir, model_id=model_id, version=version,
                        reproduce=f"python -m training.finetune --config {lineage.get('config', 'CONFIG')} "
                                  f"--out {run_dir.name}", notes=notes)
    if (run_dir / LINEAGE).is_file():
        shutil.copy2(run_dir / LINEAGE, out_dir / LINEAGE)
    return model.parent


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Fine-tune the nodule network from a research snapshot.")
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--snapshot", type=Path, default=None)
    parser.add_argument("--init-from", type=Path, default=None)
    parser.add_argument("--steps", type=int, default=None)
    args = parser.parse_args(argv)
    print(finetune(args.config, args.out, snapshot=args.snapshot, init_from=args.init_from, steps=args.steps))


if __name__ == "__main__":
    main()
