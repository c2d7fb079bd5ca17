"""Inference on a 300-slice 512x512 phantom CT, per stage, per runtime, each runtime in its own process.

Runtimes side by side in the same run, from the same trained weights: PyTorch eager fp32 (the
MONAI-bundle runner), PyTorch eager bf16 autocast (same runner, ``precision.cpu: bf16``), TorchScript
bf16, ONNX Runtime fp32. Each runs ``inference.pipeline.analyze_series`` from the DICOM files in a
fresh subprocess, so its peak RSS is its own; ``--rounds`` runs every runtime that many times, in
turn, and reports the median total. Prints seconds per stage, total, peak RSS, the ratio of total and
inference time to PyTorch eager fp32, whether each runtime's findings match fp32 (same count, centres
within one voxel, diameters within 10 %), and whether the shipped manifest's configuration is the
fastest one that matches: judged on the median inference stage, the only stage whose code differs
between runtimes (the others add the machine's noise to the totals).

    .venv/bin/python benchmarks/inference.py [--threads 2] [--patch 160] [--rounds 3] [--checkpoint CKPT]

All runtimes are built from the weights inside the shipped model's ``model.onnx`` (the network is
rebuilt and checked against ONNX Runtime; the newest version under ``models/lung-nodule-phantom``,
or ``--model``), or from a training checkpoint when ``--checkpoint`` is given.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MODELS = ROOT / "models" / "lung-nodule-phantom"
STAGES = ("read", "volume", "resample", "inference", "postprocess", "total")


def child(model_dir: Path, series_dir: Path, threads: int, patch: int | None, repeat: int) -> dict[str, Any]:
    """Load one model folder and analyse the series; timings of the last repeat, peak RSS of the process."""
    import torch

    torch.set_num_threads(threads)
    from inference.manifest import load_manifest
    from inference.pipeline import analyze_series
    from inference.registry import LoadedModel, RegisteredModel, create_predictor

    manifest = load_manifest(model_dir / "manifest.yaml")
    if patch:
        spec = manifest.input.model_copy(update={"patch_size": (patch, patch, patch)})
        manifest = manifest.model_copy(update={"input": spec})
    t0 = time.perf_counter()
    registered = RegisteredModel(manifest, model_dir)
    loaded = LoadedModel(manifest, registered.identity, create_predictor(registered, threads, device="cpu"))
    load_s = time.perf_counter() - t0
    paths = sorted(series_dir.glob("*.dcm"))
    result = None
    for _ in range(repeat):
        result = analyze_series(paths, loaded)
    assert result is not None
    return {
        "load_s": load_s,
        "timings": result.timings,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "findings": [[*d.center_mm, d.diameter_mm, d.confidence] for d in result.detections],
        "precision": getattr(loaded.predictor, "precision", "fp32"),
    }


def matches(ref: list[list[float]], got: list[list[float]], voxel_mm: float) -> bool:
    if len(ref) != len(got):
        return False
    for r in ref:
        nearest = min(got, key=lambda g: math.dist(g[:3], r[:3]))
        if math.dist(nearest[:3], r[:3]) > voxel_mm or abs(nearest[3] - r[3]) > 0.1 * r[3]:
            return False
    return True


def shipped_configuration(manifest: dict[str, Any]) -> str:
    """The benchmark row a manifest's runtime and CPU precision correspond to."""
    precision = manifest.get("precision", {}).get("cpu", "fp32")
    name = {"onnx": "onnxruntime", "monai-bundle": "pytorch-eager", "torchscript": "torchscript"}[manifest["runtime"]]
    return f"{name}-{precision}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="training checkpoint (default: the weights inside the shipped model.onnx)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--patch", type=int, default=0, help="cubic patch size (0: the manifest's)")
    parser.add_argument("--repeat", type=int, default=1, help="analyses per process (the last is reported)")
    parser.add_argument("--rounds", type=int, default=1, help="runs of every runtime, in turn (median reported)")
    parser.add_argument("--model", type=Path, default=None, help="model folder (default: the newest shipped)")
    parser.add_argument("--seed", type=int, default=900_000)
    parser.add_argument("--child", nargs=2, type=Path, metavar=("MODEL_DIR", "SERIES_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.threads, args.patch or None, args.repeat)))
        return

    import statistics

    import yaml

    from inference.registry import Registry
    from training.export import export_model_folder, load_trained
    from training.phantom import make_phantom
    from training.series import write_ct_series
    from training.warm_start import network_from_onnx

    # The newest version, as the service picks it.
    shipped_dir = args.model or Registry(MODELS.parent).get(MODELS.name).directory
    shipped = yaml.safe_load((shipped_dir / "manifest.yaml").read_text())
    with tempfile.TemporaryDirectory(prefix="tamsoat-bench-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        phantom = make_phantom(args.seed, n_nodules=4, nodule_diameters_mm=[6.0, 9.0, 14.0, 22.0])
        write_ct_series(phantom, work / "series", seed=1)
        del phantom
        print(f"phantom series: 300 x 512 x 512, written in {time.perf_counter() - t0:.1f} s", flush=True)
        # The PyTorch network is rebuilt from the shipped ONNX file's weights (checked against ONNX Runtime),
        # or taken from a training checkpoint when one is given.
        net = load_trained(args.checkpoint)[0] if args.checkpoint else network_from_onnx(shipped_dir / "model.onnx")
        runtimes: dict[str, Path] = {
            "pytorch-eager-fp32": export_model_folder(net, work / "eager-fp32", "monai-bundle", shipped),
            "pytorch-eager-bf16": export_model_folder(net, work / "eager-bf16", "monai-bundle", shipped,
                                                      cpu_precision="bf16"),
            "torchscript-bf16": export_model_folder(net, work / "ts-bf16", "torchscript", shipped,
                                                    cpu_precision="bf16"),
            "onnxruntime-fp32": export_model_folder(net, work / "onnx", "onnx", shipped),
        }
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in runtimes}
        for round_ in range(args.rounds):
            for name, folder in runtimes.items():
                cmd = [sys.executable, __file__, "--child", str(folder), str(work / "series"),
                       "--threads", str(args.threads), "--patch", str(args.patch), "--repeat", str(args.repeat)]
                out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
                runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(f"round {round_ + 1}/{args.rounds} {name}: {runs[name][-1]['timings']['total']:.2f} s",
                      flush=True)
    # Per runtime, the round with the median total.
    results = {name: sorted(rs, key=lambda r: r["timings"]["total"])[(len(rs) - 1) // 2] for name, rs in runs.items()}

    voxel = min(shipped["input"]["spacing_mm"])
    ref = results["pytorch-eager-fp32"]
    print(f"\n{shipped['id']} {shipped['version']}, threads {args.threads}, patch "
          f"{args.patch or shipped['input']['patch_size']}, seconds per stage (last of {args.repeat} per process, "
          f"median of {args.rounds} rounds); peak RSS of each runtime's own process\n")
    head = f"{'runtime':22}" + "".join(f"{s:>11}" for s in STAGES) + f"{'load':>7}{'RSS MB':>8}{'x total':>9}" \
        f"{'x infer':>9}{'findings':>9}  match fp32"
    print(head)
    for name, r in results.items():
        t = r["timings"]
        row = f"{name:22}" + "".join(f"{t.get(s, 0.0):11.2f}" for s in STAGES)
        row += f"{r['load_s']:7.2f}{r['peak_rss_mb']:8.0f}"
        row += f"{ref['timings']['total'] / t['total']:9.2f}{ref['timings']['inference'] / t['inference']:9.2f}"
        row += f"{len(r['findings']):9d}  {'yes' if matches(ref['findings'], r['findings'], voxel) else 'NO'}"
        print(row)
    print("\n(x total / x infer: PyTorch eager fp32 time divided by this runtime's; >1 is faster)")
    # The runtimes differ only in the inference stage (the other stages run the same code), so the choice
    # is made on its median over the rounds; the totals' spread shows how noisy the machine was.
    infer = {n: statistics.median(r["timings"]["inference"] for r in rs) for n, rs in runs.items()}
    matching = [n for n, r in results.items() if matches(ref["findings"], r["findings"], voxel)]
    fastest = min(matching, key=lambda n: infer[n])
    ours = shipped_configuration(shipped)
    spread = {n: statistics.pstdev([r["timings"]["total"] for r in rs]) for n, rs in runs.items()}
    print("median inference stage over rounds (s): " + ", ".join(f"{n} {v:.2f}" for n, v in infer.items()))
    print(f"fastest runtime (inference stage) whose findings match fp32: {fastest}; the shipped manifest runs "
          f"{ours} ({'the fastest' if ours == fastest else 'NOT the fastest'}); spread of totals over rounds (s): "
          + ", ".join(f"{n} {v:.2f}" for n, v in spread.items()))
    for name, r in results.items():
        print(f"{name} findings (x, y, z mm; diameter mm; confidence): "
              + "; ".join(f"({f[0]:.1f}, {f[1]:.1f}, {f[2]:.1f}) {f[3]:.1f} {f[4]:.2f}" for f in r["findings"]))


if __name__ == "__main__":
    main()
