"""Train the nodule network on synthetic phantoms: ``train(config_path, out_dir, resume) -> checkpoint``.

``out_dir`` receives ``config.yaml`` (the validated configuration), ``cache/`` (pre-processed phantoms),
``metrics.jsonl`` (one JSON object per logged step or validation), ``checkpoint_last.pt`` (every
``checkpoint_every`` steps, for resuming) and ``checkpoint_best.pt`` (best validation Dice).

Run: ``python -m training.train --config training/configs/shipped.yaml --out runs/shipped [--resume]``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from monai.losses import DiceLoss

from inference.networks import NoduleNet
from training.config import TrainConfig, load_config
from training.dataset import VALIDATION_SEED_SHIFT, PatchSampler, build_cache
from training.warm_start import freeze_batchnorm, starting_network

LAST = "checkpoint_last.pt"
BEST = "checkpoint_best.pt"


def train_seeds(cfg: TrainConfig) -> list[int]:
    return [cfg.data.seed_offset + n for n in range(cfg.data.train_phantoms)]


def val_seeds(cfg: TrainConfig) -> list[int]:
    return [cfg.data.seed_offset + VALIDATION_SEED_SHIFT + n for n in range(cfg.data.val_phantoms)]


class Loss:
    """Voxel-weighted binary cross-entropy plus Dice on the sigmoid (MONAI), per batch or per patch."""

    def __init__(self, dice_weight: float, dice_per_patch: bool = False) -> None:
        self.dice = DiceLoss(sigmoid=True, batch=not dice_per_patch, smooth_nr=1.0, smooth_dr=1.0)
        self.dice_weight = dice_weight

    def __call__(self, logits: torch.Tensor, target: torch.Tensor,
                 weight: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        bce = F.binary_cross_entropy_with_logits(logits, target, weight=weight)
        dice = self.dice(logits, target)
        total = bce + self.dice_weight * dice
        return total, {"loss": float(total.detach()), "bce": float(bce.detach()), "dice_loss": float(dice.detach())}


def resolve_relative(value: str | None, config_path: Path) -> Path | None:
    """A path named in a config file, relative to that file's folder."""
    if not value:
        return None
    p = Path(value).expanduser()
    return p if p.is_absolute() else (Path(config_path).parent / p).resolve()


def lr_lambda(cfg: TrainConfig) -> Any:
    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return 0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return f


def dice_score(logits: torch.Tensor, target: torch.Tensor, threshold: float) -> float:
    """Hard Dice of ``sigmoid(logits) > threshold`` over the whole batch (1 when both are empty)."""
    pred = torch.sigmoid(logits) > threshold
    truth = target > 0.5
    inter = float((pred & truth).sum())
    total = float(pred.sum() + truth.sum())
    return 1.0 if total == 0 else 2.0 * inter / total


def evaluate_patches(net: NoduleNet, images: torch.Tensor, labels: torch.Tensor, loss: Loss,
                     threshold: float, batch: int) -> dict[str, float]:
    net.eval()
    outs = []
    with torch.inference_mode():
        for b in range(0, len(images), batch):
            outs.append(net(images[b:b + batch]))
    net.train()
    logits = torch.cat(outs)
    _, parts = loss(logits, labels)
    return {"val_loss": parts["loss"], "val_dice": dice_score(logits, labels, threshold)}


def save_checkpoint(path: Path, **state: Any) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=False)


class MetricsLog:
    """Appends JSON lines; on resume, drops records after the resumed step (written by a killed run)."""

    def __init__(self, path: Path, keep_until_step: int | None) -> None:
        self.path = path
        kept = []
        if keep_until_step is not None and path.exists():
            kept = [line for line in path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= keep_until_step]
        path.write_text("".join(line + "\n" for line in kept))

    def __call__(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")



def train_step(net: torch.nn.Module, sampler: PatchSampler, loss_fn: Loss, optimizer: torch.optim.Optimizer,
               scheduler: torch.optim.lr_scheduler.LRScheduler, batch_size: int) -> dict[str, float]:
    """One optimisation step on a fresh batch of patches; returns the loss parts for logging."""
    x, y, w = sampler.batch(batch_size)
    logits = net(torch.from_numpy(x))
    loss, parts = loss_fn(logits, torch.from_numpy(y), torch.from_numpy(w))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    return parts

def train(config_path: Path, out_dir: Path, resume: bool = False, steps: int | None = None) -> Path:
    """Train as ``config_path`` says, writing into ``out_dir``; return the best checkpoint's path.

    With ``resume`` the run continues from ``out_dir/checkpoint_last.pt`` when it exists (model,
    optimiser, schedule, sampler state and step), otherwise it starts afresh. ``steps`` overrides the
    config's total, e.g. to extend a finished run: the cosine schedule is then laid over the new total, so
    the learning rate rises again from where the old schedule had brought it (a warm restart).
    """
    cfg = load_config(config_path)
    if steps is not None:
        cfg = cfg.model_copy(update={"steps": int(steps)})
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng([cfg.seed, 1])
    last_path, best_path = out_dir / LAST, out_dir / BEST
    resuming = resume and last_path.exists()
    state: dict[str, Any] = load_checkpoint(last_path) if resuming else {}
    log = MetricsLog(out_dir / "metrics.jsonl", keep_until_step=int(state["step"]) if resuming else None)
    t0 = time.monotonic()

    def say(msg: str) -> None:
        print(f"[train {cfg.name}] {msg}", flush=True)

    say(f"preparing {cfg.data.train_phantoms} training + {cfg.data.val_phantoms} validation phantoms")
    cache = out_dir / "cache"
    cases = build_cache(cfg.data, cache, train_seeds(cfg), log=say)
    val_cases = build_cache(cfg.data, cache, val_seeds(cfg), log=say)
    say(f"phantoms ready after {time.monotonic() - t0:.0f} s")
    val_sampler = PatchSampler(val_cases, cfg.sampling.model_copy(update={"flip": False}),
                               np.random.default_rng([cfg.seed, 2]))
    vx, vy, _ = val_sampler.batch(cfg.val_patches)
    val_images, val_labels = torch.from_numpy(vx), torch.from_numpy(vy)

    init = resolve_relative(cfg.init_from, config_path)
    if init is not None and not init.exists():
        raise FileNotFoundError(f"init_from {init} does not exist (a model folder or a training checkpoint)")
    net, cfg, parent, how = starting_network(init, cfg)
    frozen_bn = cfg.freeze_batchnorm if cfg.freeze_batchnorm is not None else init is not None and init.is_dir()
    say(f"network: {how}" + (f" ({parent})" if parent else ""))
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    loss_fn = Loss(cfg.dice_weight, cfg.dice_per_patch)
    step, best, elapsed_before = 0, -1.0, 0.0
    if resuming:
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        step, best, elapsed_before = int(state["step"]), float(state["best"]), float(state["elapsed_s"])
        say(f"resumed from {last_path} at step {step}")
    sampler = PatchSampler(cases, cfg.sampling, rng)

    def checkpoint(path: Path) -> None:
        save_checkpoint(path, model=net.state_dict(), optimizer=optimizer.state_dict(),
                        scheduler=scheduler.state_dict(), rng=rng.bit_generator.state,
                        torch_rng=torch.get_rng_state(), step=step, best=best,
                        elapsed_s=elapsed_before + time.monotonic() - t_start,
                        config=cfg.model_dump(mode="json"))

    def set_train_mode() -> None:
        net.train()
        if frozen_bn:
            freeze_batchnorm(net)

    set_train_mode()
    t_start = time.monotonic()
    window: list[dict[str, float]] = []
    while step < cfg.steps:
        window.append(train_step(net, sampler, loss_fn, optimizer, scheduler, cfg.batch_size))
        step += 1
        if step % cfg.log_every == 0 or step == cfg.steps:
            mean = {k: float(np.mean([w[k] for w in window])) for k in window[0]}
            window = []
            elapsed = elapsed_before + time.monotonic() - t_start
            record = {"step": step, **mean, "lr": scheduler.get_last_lr()[0], "elapsed_s": round(elapsed, 1)}
            log(record)
            say(f"step {step}/{cfg.steps} loss {mean['loss']:.4f} (bce {mean['bce']:.4f}, dice "
                f"{mean['dice_loss']:.4f}) lr {record['lr']:.2e} {elapsed:.0f} s")
        if step % cfg.val_every == 0 or step == cfg.steps:
            metrics = evaluate_patches(net, val_images, val_labels, loss_fn, cfg.threshold, cfg.batch_size)
            set_train_mode()
            improved = metrics["val_dice"] > best
            if improved:
                best = metrics["val_dice"]
            log({"step": step, **metrics, "best": best})
            say(f"validation at step {step}: loss {metrics['val_loss']:.4f} dice {metrics['val_dice']:.4f}"
                + (" (best)" if improved else ""))
            if improved:
                checkpoint(best_path)
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            checkpoint(last_path)
    if not best_path.exists():
        checkpoint(best_path)
    say(f"done: {step} steps, best validation Dice {best:.4f}, checkpoint {best_path}")
    return best_path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--steps", type=int, default=None, help="total steps, overriding the config's")
    args = parser.parse_args(argv)
    print(train(args.config, args.out, args.resume, args.steps))


if __name__ == "__main__":
    main()
