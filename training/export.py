"""Export a trained checkpoint as a model folder: ``model.onnx``, ``manifest.yaml``, ``model_card.md``.

Run: ``python -m training.export --checkpoint runs/shipped/checkpoint_best.pt
--out models/lung-nodule-phantom/0.1.0 --model-id lung-nodule-phantom --version 0.1.0 --evaluate 10``.

``--runtime monai-bundle --cpu-precision bf16`` also writes the weights as a MONAI bundle (``configs/``,
``models/model.pt``) and makes the manifest run that bundle under bf16 autocast on CPUs with native bf16
(the fastest configuration with the same findings, ``benchmarks/inference.py``); ``model.onnx`` stays in
the folder, parity-checked, for ONNX users and for warm starts.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import uuid
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from inference.networks import NoduleNet, build_network
from inference.runners import OnnxPredictor
from training.config import TrainConfig
from training.evaluate import MIN_MATCH_RADIUS_MM, evaluate_model

MODEL_NAME = "tamsoat lung nodule detector (phantom-trained)"
MANUFACTURER = "tamsoat"
INTENDED_USE = "Demonstrates the pipeline on synthetic chest-CT phantoms. Not for clinical use."
PARITY_TOLERANCE = 1e-3
# Whole chest CT at 1.25 mm in one call: measured by benchmarks/inference.py to be 2.6x faster than 160^3
# windows on 2 cores with the same findings, peak RSS ~2 GB.
INFERENCE_PATCH = (320, 320, 320)
OPSET = 17


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_trained(checkpoint: Path) -> tuple[NoduleNet, TrainConfig, dict[str, Any]]:
    """The network (eval mode), its training configuration and the checkpoint's bookkeeping."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    cfg = TrainConfig.model_validate(state["config"])
    net = build_network(cfg.model.features)
    net.load_state_dict(state["model"])
    net.eval()
    info = {k: state[k] for k in ("step", "best", "elapsed_s") if k in state}
    return net, cfg, info


def _export(net: NoduleNet, path: Path) -> None:
    example = torch.zeros(1, 1, 32, 32, 32)
    axes = {2: "depth", 3: "height", 4: "width"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(net, (example,), str(path), input_names=["image"], output_names=["logits"],
                          opset_version=OPSET, dynamic_axes={"image": axes, "logits": axes}, dynamo=False)


def export_torchscript(net: torch.nn.Module, path: Path) -> Path:
    """Write ``net`` (eval mode) as a traced TorchScript archive with dynamic D/H/W; returns ``path``.

    NoduleNet has no shape-dependent Python control flow, so a trace on one size holds for every
    size divisible by its stride (checked on a second size before saving).
    """
    net = net.eval()
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated upstream
        traced = torch.jit.trace(net, torch.zeros(1, 1, 32, 32, 32), check_trace=False)
        other = torch.rand(1, 1, 24, 40, 16)
        diff = float((traced(other) - net(other)).abs().max())
    if diff > PARITY_TOLERANCE:
        raise RuntimeError(f"TorchScript trace differs from the network by {diff:.2e} on another input size")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(traced, str(path))
    return path


def bundle_network_def(net: NoduleNet) -> dict[str, Any]:
    """The declarative ``network_def`` of a NoduleNet (a ``_target_`` and its arguments, no expressions)."""
    return {"_target_": f"{NoduleNet.__module__}.{NoduleNet.__qualname__}", "features": list(net.features)}


def export_bundle(net: NoduleNet, bundle_dir: Path, *, name: str = MODEL_NAME, version: str = "0.1.0",
                  spacing_mm: tuple[float, float, float] = (1.25, 1.25, 1.25),
                  window_hu: tuple[float, float] = (-1000.0, 400.0)) -> Path:
    """Write a MONAI bundle in the standard layout: ``configs/metadata.json``, ``configs/inference.json``
    (``network_def``), ``models/model.pt`` (the state dict). Returns the path of ``models/model.pt``.

    ``network_def`` names ``inference.networks.nodule_net.NoduleNet``, one of the service's own networks, so
    the bundle is declarative and runs without ``trusted: true``.
    """
    bundle_dir = Path(bundle_dir)
    (bundle_dir / "configs").mkdir(parents=True, exist_ok=True)
    (bundle_dir / "models").mkdir(parents=True, exist_ok=True)
    metadata = {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/"
                  "meta_schema_20220324.json",
        "version": version,
        "changelog": {version: "exported by training.export"},
        "monai_version": monai_version(),
        "pytorch_version": torch.__version__.split("+")[0],
        "name": name,
        "task": "lung nodule detection (per-voxel logits)",
        "description": INTENDED_USE,
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "hounsfield", "num_channels": 1,
                                 "spatial_shape": ["8*n", "8*n", "8*n"], "dtype": "float32",
                                 "value_range": [0, 1], "is_patch_data": True,
                                 "channel_def": {"0": f"CT windowed {list(window_hu)} HU, "
                                                      f"{list(spacing_mm)} mm"}}},
            "outputs": {"pred": {"type": "image", "format": "logits", "num_channels": 1,
                                 "spatial_shape": ["8*n", "8*n", "8*n"], "dtype": "float32",
                                 "value_range": [], "is_patch_data": True, "channel_def": {"0": "nodule"}}},
        },
    }
    (bundle_dir / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
    inference = {"network_def": bundle_network_def(net)}
    (bundle_dir / "configs" / "inference.json").write_text(json.dumps(inference, indent=2) + "\n")
    weights = bundle_dir / "models" / "model.pt"
    torch.save(net.state_dict(), weights)
    return weights


RUNTIME_FILES = {"onnx": "model.onnx", "torchscript": "model.ts", "monai-bundle": "models/model.pt"}
BUNDLE_FILES = ("configs/metadata.json", "configs/inference.json", RUNTIME_FILES["monai-bundle"])


def export_model_folder(net: NoduleNet, out_dir: Path, runtime: str, manifest: dict[str, Any],
                        cpu_precision: str = "fp32") -> Path:
    """Write ``net`` as a model folder for ``runtime`` (onnx, torchscript or monai-bundle) with a manifest
    copied from ``manifest`` (runtime, files and their sha256, trust and precision replaced).

    For a bundle the folder is the bundle (``configs/``, ``models/`` next to ``manifest.yaml``).
    Returns the folder.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if runtime == "onnx":
        _export(net, out_dir / RUNTIME_FILES[runtime])
        files = [RUNTIME_FILES[runtime]]
    elif runtime == "torchscript":
        export_torchscript(net, out_dir / RUNTIME_FILES[runtime])
        files = [RUNTIME_FILES[runtime]]
    elif runtime == "monai-bundle":
        export_bundle(net, out_dir)
        files = list(BUNDLE_FILES)
    else:
        raise ValueError(f"unknown runtime {runtime!r} (onnx, torchscript, monai-bundle)")
    data = {k: v for k, v in manifest.items() if k not in ("files", "entrypoint", "trusted", "precision")}
    data["runtime"] = runtime
    if cpu_precision != "fp32":
        data["precision"] = {"cpu": cpu_precision}
    data["files"] = {name: sha256_file(out_dir / name) for name in files}
    (out_dir / "manifest.yaml").write_text(yaml.safe_dump(data, sort_keys=False, width=120))
    return out_dir


def monai_version() -> str:
    import monai

    return str(monai.__version__)


def parity(net: NoduleNet, model_path: Path, shape: tuple[int, int, int] = (40, 56, 72)) -> float:
    """Max absolute difference between the network (eval mode) and the service's ONNX runner on a fixed input."""
    x = np.random.default_rng(1234).random((1, 1, *shape), dtype=np.float32)
    was_training = net.training
    net.eval()
    with torch.inference_mode():
        expected = net(torch.from_numpy(x)).numpy()
    net.train(was_training)
    got = OnnxPredictor(model_path, threads=2, providers=["CPUExecutionProvider"]).predict(x)
    return float(np.max(np.abs(got - expected)))


def export_onnx(checkpoint: Path, out_dir: Path, *, model_id: str, version: str,
                evaluation: dict[str, Any] | None = None, reproduce: str | None = None,
                notes: list[str] | None = None, limitations: list[str] | None = None,
                runtime: str = "onnx", cpu_precision: str = "fp32") -> Path:
    """Write ``model.onnx`` (dynamic D/H/W), check it against PyTorch, write the manifest and model card.

    With ``runtime="monai-bundle"`` the folder is also a MONAI bundle of the same weights, and the manifest
    runs it (under ``cpu_precision``). Returns the path of ``model.onnx``. A new Device UID is drawn on every
    export. Raises ``RuntimeError`` when the ONNX output differs from PyTorch by more than ``PARITY_TOLERANCE``.
    """
    if runtime not in ("onnx", "monai-bundle"):
        raise ValueError(f"runtime {runtime!r}: onnx or monai-bundle")
    if cpu_precision != "fp32" and runtime == "onnx":
        raise ValueError("cpu_precision bf16 needs runtime monai-bundle")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    net, cfg, info = load_trained(checkpoint)
    model_path = out_dir / "model.onnx"
    _export(net, model_path)
    diff = parity(net, model_path)
    if diff > PARITY_TOLERANCE:
        raise RuntimeError(f"ONNX and PyTorch outputs differ by {diff:.2e} (> {PARITY_TOLERANCE})")
    files = [model_path.name]
    if runtime == "monai-bundle":
        sp, win = cfg.data.spacing_mm, cfg.data.window_hu
        export_bundle(net, out_dir, version=version, spacing_mm=(float(sp[0]), float(sp[1]), float(sp[2])),
                      window_hu=(float(win[0]), float(win[1])))
        files = [*BUNDLE_FILES, *files]
    manifest: dict[str, Any] = {
        "id": model_id,
        "version": version,
        "name": MODEL_NAME,
        "manufacturer": MANUFACTURER,
        "device_uid": f"2.25.{uuid.uuid4().int}",
        "task": "lung-nodule-detection",
        "intended_use": INTENDED_USE,
        "runtime": runtime,
        **({"precision": {"cpu": cpu_precision}} if cpu_precision != "fp32" else {}),
        "input": {
            "spacing_mm": [float(s) for s in cfg.data.spacing_mm],
            "window_hu": [float(w) for w in cfg.data.window_hu],
            "patch_size": list(INFERENCE_PATCH),
            "divisible_by": NoduleNet.stride,
        },
        "output": {
            "kind": "logits",
            "threshold": float(cfg.threshold),
            "min_diameter_mm": 3.0,
            "label": {"scheme": "SCT", "value": "27925004", "meaning": "Nodule"},
        },
        "files": {name: sha256_file(out_dir / name) for name in files},
    }
    (out_dir / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False, width=120))
    write_model_card(out_dir, manifest, cfg, info, diff, evaluation, reproduce, notes, limitations)
    return model_path


def _fmt(v: Any) -> str:
    return "n/a" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))


def _runtime_line(manifest: dict[str, Any]) -> str:
    if manifest["runtime"] == "onnx":
        return "ONNX Runtime (`model.onnx`), fp32."
    precision = manifest.get("precision", {}).get("cpu", "fp32")
    how = ("bf16 autocast on CPUs with native bf16 (AVX512-BF16 or AMX), fp32 elsewhere" if precision == "bf16"
           else "fp32")
    return (f"MONAI bundle (`configs/`, `models/model.pt`), PyTorch eager, {how}; fp16 autocast on a GPU. "
            "`model.onnx` holds the same weights for ONNX Runtime.")


def write_model_card(out_dir: Path, manifest: dict[str, Any], cfg: TrainConfig, info: dict[str, Any],
                     parity_diff: float, evaluation: dict[str, Any] | None, reproduce: str | None,
                     notes: list[str] | None = None, limitations: list[str] | None = None) -> None:
    """Write ``model_card.md``: what the model is, its data, the run, the held-out evaluation, limitations."""
    limitations = [f"- {line}" for line in limitations or []]
    if limitations:
        limitations.insert(0, "")
    minutes = info.get("elapsed_s", 0.0) / 60.0
    lines = [
        f"# {manifest['name']} — {manifest['id']} {manifest['version']}",
        "",
        "**Demonstrates the tamsoat pipeline. NOT for clinical use.** It has never seen a real CT;",
        "its numbers below are measured on synthetic phantoms and say nothing about patients.",
        "",
        "## What it is",
        "",
        "- Task: lung-nodule detection on chest CT; output: per-voxel nodule logits.",
        f"- Runtime: {_runtime_line(manifest)}",
        f"- Network: `inference.networks.NoduleNet` (3-D encoder-decoder, stride {NoduleNet.stride}, features "
        f"{list(cfg.model.features)}), opset {OPSET}, dynamic depth/height/width.",
        f"- Input: the shared pre-processing `inference.preprocess`: resample to {list(cfg.data.spacing_mm)} mm "
        f"(i, j, k), window {list(cfg.data.window_hu)} HU to [0, 1]; spatial sizes divisible by {NoduleNet.stride}.",
        f"- Operating point: sigmoid(logit) > {cfg.threshold}; components under "
        f"{manifest['output']['min_diameter_mm']} mm equivalent diameter are ignored.",
        f"- Device UID: `{manifest['device_uid']}` (new for every trained version).",
        f"- ONNX/PyTorch parity on a fixed input: max abs logit difference {parity_diff:.1e}.",
        "",
        "## Training data",
        "",
        "Synthetic chest-CT phantoms generated by `training/phantom.py` (deterministic by seed): body, fat,",
        "muscle, ribs, spine, mediastinum, heart, aorta, lungs, branching vessels and airways as confounders;",
        "solid, part-solid and ground-glass nodules (free, juxta-pleural, juxta-vascular) with log-uniform",
        f"diameters {list(cfg.data.phantom.nodule_diameter_mm)} mm; low-dose noise "
        f"{list(cfg.data.phantom.noise_sigma_hu)} HU; in-plane spacing {list(cfg.data.phantom.inplane_spacing_mm)} mm,",
        f"slices {list(cfg.data.phantom.slice_spacing_mm)} mm. {cfg.data.train_phantoms} training phantoms (seeds "
        f"{cfg.data.seed_offset}..{cfg.data.seed_offset + cfg.data.train_phantoms - 1}), "
        f"{cfg.data.val_phantoms} validation phantoms.",
        f"Labels: each nodule's equivalent sphere. Patches {list(cfg.sampling.patch_size)}, "
        f"{cfg.sampling.nodule_fraction:.0%} around nodules, {cfg.sampling.vessel_fraction:.0%} on vessels, the rest "
        "in the lungs; random flips. Loss: BCE + Dice (MONAI).",
        "",
        "## Training run",
        "",
        f"- Steps: {info.get('step', 'n/a')} (batch {cfg.batch_size}, AdamW lr {cfg.lr}, cosine schedule), "
        f"best validation Dice {_fmt(info.get('best'))}.",
        f"- Wall time of the training loop: {minutes:.0f} min on 2 shared CPU cores (phantom preparation not "
        "included).",
        "- Reproduce:",
        "",
        "```",
        reproduce or "python -m training.train --config training/configs/shipped.yaml --out runs/shipped",
        "```",
        *[f"- {note}" for note in notes or []],
        "",
        "## Evaluation on held-out phantoms",
        "",
    ]
    if evaluation is None:
        lines.append("Not evaluated at export time (`python -m training.export ... --evaluate 10`).")
    else:
        kinds = evaluation["sensitivity_by_kind"]
        counts = evaluation["nodules_by_kind"]
        lines += [
            f"{evaluation['scans']} full-size phantoms never used in training (seeds 900000.., 300x512x512 at "
            f"0.7x0.7x1.25 mm, up to 5 nodules of log-uniform 3–30 mm each). Sliding-window ONNX Runtime "
            f"inference, sigmoid > {cfg.threshold}, connected components; a detection matches a nodule when its "
            f"centroid lies within the nodule's radius (at least {MIN_MATCH_RADIUS_MM} mm) of its centre.",
            "",
            "| metric | value |",
            "| --- | --- |",
            f"| nodules | {evaluation['nodules']} |",
            f"| sensitivity, all sizes | {_fmt(evaluation['sensitivity'])} |",
            f"| sensitivity, ≥ 6 mm ({evaluation['nodules_ge_6mm']} nodules) | "
            f"{_fmt(evaluation['sensitivity_ge_6mm'])} |",
            *([f"| sensitivity, < 6 mm ({evaluation['nodules_lt_6mm']} nodules) | "
               f"{_fmt(evaluation['sensitivity_lt_6mm'])} |"] if "nodules_lt_6mm" in evaluation else []),
            *[f"| sensitivity, {k} ({counts[k]}) | {_fmt(v)} |" for k, v in kinds.items()],
            f"| false positives per scan | {_fmt(evaluation['false_positives_per_scan'])} |",
            f"| mean time per scan (pre-processing + inference + labelling, 2 threads) | "
            f"{_fmt(evaluation['inference_s_mean'])} s |",
            "",
        ]
        if evaluation["missed"]:
            lines += ["", "Missed nodules:", "", "| scan | kind | diameter (mm) | centre (mm, LPS) |",
                      "| --- | --- | --- | --- |"]
            lines += [f"| {m['scan']} | {m['kind']} | {m['diameter_mm']:.1f} | "
                      f"({', '.join(f'{c:.1f}' for c in m['center_mm'])}) |" for m in evaluation["missed"]]
        else:
            lines += ["", "Missed nodules: none."]
    lines += [
        "",
        "## Limitations",
        "",
        "Trained and tested on simple analytic phantoms only: real anatomy, reconstruction kernels, artefacts,",
        "scars, atelectasis, calcified and irregular nodules are absent. Do not use for diagnosis.",
        *limitations,
        "",
    ]
    (out_dir / "model_card.md").write_text("\n".join(lines))


CARD_SECTION_HEADINGS = ("## FROC", "## Evaluation on held-out phantoms")


def replace_card_section(card: str, section: str) -> str:
    """``card`` (a model card's markdown) with its evaluation section (a heading starting with one of
    ``CARD_SECTION_HEADINGS``, up to the next ``## `` heading) replaced by ``section``; without one,
    ``section`` goes before ``## Limitations`` (or at the end)."""
    lines = card.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.startswith(CARD_SECTION_HEADINGS)), None)
    if start is None:
        start = end = next((i for i, line in enumerate(lines) if line.startswith("## Limitations")), len(lines))
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    body = section if section.endswith("\n") else section + "\n"
    return "".join([*lines[:start], body, "\n" if end < len(lines) else "", *lines[end:]])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Export a checkpoint as an ONNX model folder.")
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model-id", default="lung-nodule-phantom")
    parser.add_argument("--version", default="0.1.0")
    parser.add_argument("--evaluate", type=int, default=0, help="held-out phantoms to evaluate on (0: none)")
    parser.add_argument("--reproduce", default=None, help="the training command for the model card")
    parser.add_argument("--note", action="append", default=[], help="a line about the run for the model card")
    parser.add_argument("--limitation", action="append", default=[], help="a known limitation for the model card")
    parser.add_argument("--runtime", choices=("onnx", "monai-bundle"), default="onnx",
                        help="what the manifest runs (model.onnx is written either way)")
    parser.add_argument("--cpu-precision", choices=("fp32", "bf16"), default="fp32",
                        help="monai-bundle only: bf16 autocast on CPUs with native bf16")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    try:
        path = export_onnx(args.checkpoint, args.out, model_id=args.model_id, version=args.version,
                           reproduce=args.reproduce, notes=args.note, limitations=args.limitation,
                           runtime=args.runtime, cpu_precision=args.cpu_precision)
    except ValueError as exc:
        parser.exit(2, f"training.export: {exc}\n")
    if args.evaluate:
        summary = evaluate_model(args.out, args.evaluate)
        print(json.dumps(summary, indent=2))
        # Rewrite the card with the evaluation; model.onnx and the manifest (Device UID) stay as exported.
        manifest = yaml.safe_load((args.out / "manifest.yaml").read_text())
        net, cfg, info = load_trained(args.checkpoint)
        write_model_card(args.out, manifest, cfg, info, parity(net, path), summary, args.reproduce, args.note,
                         args.limitation)
        (args.checkpoint.parent / "evaluation.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(path)


if __name__ == "__main__":
    main()
