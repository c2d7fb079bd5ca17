"""Compare model versions: FROC curves, CPM, sensitivity at fixed false-positive rates, per size band and type.

Cases come from synthetic held-out phantoms (ground truth known exactly) or from a research snapshot's
test split (the radiologists' final read as truth: accepted, edited and added findings; rejected AI
findings are reported separately as hard negatives). Every model runs exactly as the service runs it
(``inference.pipeline.detect_in_volume``: the model's own spacing and window, sliding window, the service's
post-processing), whatever its runtime, with the probability threshold lowered to ``detect_threshold``
(default 0.1): the components are candidates scored by their peak probability, and sweeping a threshold
over the scores gives the FROC curve. The operating point is the manifest's threshold applied to those
scores (a component at the lower threshold may be slightly larger than at the operating one).

A candidate matches a nodule when its centre lies within the nodule's radius (at least 2.5 mm) of the
nodule's centre; candidates matching no nodule are false positives. CPM is the mean sensitivity at
1/8, 1/4, 1/2, 1, 2, 4 and 8 false positives per scan.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from inference.manifest import Manifest, load_manifest
from inference.pipeline import detect_in_volume
from inference.registry import ModelRunner, RegisteredModel, create_runner
from inference.volume import Volume
from training.evaluate import HELD_OUT_SEED_BASE, MIN_MATCH_RADIUS_MM
from training.nodule_mix import draw_nodules
from training.phantom import Phantom, make_phantom
from training.snapshot import SIZE_BANDS_MM, Snapshot, size_band

FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
# The screening bands the targets are set in (besides the review's SIZE_BANDS_MM): < 6, 6-10, >= 10 mm.
DIAMETER_BANDS_MM = ((0.0, 6.0, "<6 mm"), (6.0, 10.0, "6-10 mm"), (10.0, math.inf, ">=10 mm"))
DETECT_THRESHOLD = 0.1


def nodule_type(kind: str) -> str:
    """One spelling for nodule types: ``part-solid`` (phantoms) and ``part_solid`` (review) alike."""
    return (kind or "unknown").replace("-", "_")


@dataclass(frozen=True)
class Truth:
    center_mm: tuple[float, float, float]
    diameter_mm: float
    kind: str = "unknown"


@dataclass(frozen=True)
class EvalCase:
    """One scan: how to load its volume (loaded only while it is scored), its nodules and hard negatives."""

    name: str
    load: Callable[[], Volume]
    nodules: tuple[Truth, ...]
    hard_negatives: tuple[Truth, ...] = ()


@dataclass(frozen=True)
class PhantomSpec:
    shape_kji: tuple[int, int, int]
    spacing_ijk: tuple[float, float, float]
    diameters_mm: tuple[float, float]
    lidc_mix: bool  # sizes and kinds from the LIDC table (training.nodule_mix), else log-uniform sizes


TINY_PHANTOM = PhantomSpec((40, 128, 128), (1.875, 1.875, 2.5), (5.0, 15.0), lidc_mix=False)
FULL_PHANTOM = PhantomSpec((300, 512, 512), (0.7, 0.7, 1.25), (3.0, 30.0), lidc_mix=True)


@dataclass(frozen=True)
class HeldOutPhantom:
    """Makes one held-out phantom on demand (deterministic by seed); fewer nodules when they do not fit."""

    seed: int
    spec: PhantomSpec
    diameters_mm: tuple[float, ...]
    kinds: tuple[str, ...] | None = None  # None: make_phantom's default mix

    def make(self) -> Phantom:
        placed = len(self.diameters_mm)
        while True:
            try:
                return make_phantom(self.seed, self.spec.shape_kji, self.spec.spacing_ijk, placed,
                                    list(self.diameters_mm[:placed]),
                                    nodule_kinds=list(self.kinds[:placed]) if self.kinds else None)
            except RuntimeError:  # the nodules did not fit: fewer
                placed -= 1

    def volume(self) -> Volume:
        return self.make().volume


def phantom_cases(count: int, *, tiny: bool = False, nodules: int = 4, seed_base: int = HELD_OUT_SEED_BASE
                  ) -> list[EvalCase]:
    """``count`` held-out phantoms (seeds ``seed_base + i``, never used for training): full size, nodules
    3-30 mm in the LIDC size and type mix (``training.nodule_mix``), or small ones (``tiny``: 40x128x128 at
    1.875x1.875x2.5 mm, nodules log-uniform 5-15 mm) for quick checks. Each phantom is made once here for
    its ground truth and again when it is scored (so only one volume is in memory at a time)."""
    spec = TINY_PHANTOM if tiny else FULL_PHANTOM
    lo, hi = spec.diameters_mm
    cases = []
    for i in range(count):
        seed = seed_base + i
        rng = np.random.default_rng([seed, 3])
        if spec.lidc_mix:
            diameters, kinds = draw_nodules(rng, nodules, (lo, hi))
            maker = HeldOutPhantom(seed, spec, tuple(diameters), tuple(kinds))
        else:
            maker = HeldOutPhantom(seed, spec, tuple(float(d) for d in np.exp(
                rng.uniform(math.log(lo), math.log(hi), size=nodules))))
        truth = tuple(Truth(n.center_mm, n.diameter_mm, nodule_type(n.kind)) for n in maker.make().nodules)
        cases.append(EvalCase(name=f"phantom-{seed}", load=maker.volume, nodules=truth))
    return cases


def snapshot_eval_cases(snapshot: Snapshot, split: str = "test") -> list[EvalCase]:
    """A snapshot split as evaluation cases: positives are the truth, rejected AI findings hard negatives."""
    return [EvalCase(name=c.case_id, load=c.load_volume,
                     nodules=tuple(Truth(p.center_mm, p.diameter_mm, nodule_type(p.nodule_type)) for p in c.positives),
                     hard_negatives=tuple(Truth(h.center_mm, h.diameter_mm) for h in c.hard_negatives))
            for c in snapshot.split(split)]


@dataclass
class CaseScores:
    name: str
    nodules: tuple[Truth, ...]
    hard_negatives: tuple[Truth, ...]
    centers_mm: list[tuple[float, float, float]] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    seconds: float = 0.0


@dataclass(frozen=True)
class _Candidates:
    """A loaded model with its threshold lowered to ``detect_threshold`` (FROC needs the weak candidates too)."""

    manifest: Manifest
    predictor: ModelRunner


def score_model(model_dir: Path, cases: Sequence[EvalCase], *, detect_threshold: float = DETECT_THRESHOLD,
                threads: int = 2, log: Callable[[str], None] = print) -> list[CaseScores]:
    """Run the model of ``model_dir`` (any runtime the service runs) on every case through the service's own
    path (``inference.pipeline.detect_in_volume``), keeping candidates down to ``detect_threshold``."""
    manifest = load_manifest(Path(model_dir) / "manifest.yaml")
    lowered = manifest.model_copy(update={"output": manifest.output.model_copy(
        update={"threshold": min(detect_threshold, manifest.output.threshold)})})
    model = _Candidates(lowered, create_runner(RegisteredModel(manifest, Path(model_dir)), threads, device="cpu"))
    out = []
    for case in cases:
        t0 = time.monotonic()
        dets = detect_in_volume(case.load(), model)
        out.append(CaseScores(case.name, case.nodules, case.hard_negatives, [d.center_mm for d in dets],
                              [d.confidence for d in dets], time.monotonic() - t0))
        log(f"{manifest.id} {manifest.version} on {case.name}: {len(dets)} candidates, {out[-1].seconds:.1f} s")
    return out


def _hits(center: tuple[float, float, float], truth: Truth) -> bool:
    return math.dist(center, truth.center_mm) <= max(truth.diameter_mm / 2.0, MIN_MATCH_RADIUS_MM)


def _curve(nodule_scores: Sequence[float], fp_scores: Sequence[float], scans: int) -> tuple[list[float], list[float]]:
    """FROC points (false positives per scan, sensitivity), one per distinct threshold, lenient to strict."""
    thresholds = sorted({*nodule_scores, *fp_scores} - {-math.inf}, reverse=True)
    n = max(len(nodule_scores), 1)
    ns, fs = np.asarray(nodule_scores, dtype=float), np.asarray(fp_scores, dtype=float)
    fp = [float(np.sum(fs >= t)) / scans for t in thresholds]
    sens = [float(np.sum(ns >= t)) / n for t in thresholds]
    return [0.0, *fp], [0.0, *sens]


def _sens_at(fp: Sequence[float], sens: Sequence[float], rate: float) -> float:
    return max((s for f, s in zip(fp, sens, strict=True) if f <= rate), default=0.0)


def froc(scores: Sequence[CaseScores], operating_threshold: float) -> dict[str, Any]:
    """FROC, CPM, sensitivity at FP rates and at the operating point, overall, per size band and per type."""
    scans = max(len(scores), 1)
    nodules: list[tuple[Truth, float]] = []  # each nodule with the best score of a candidate on it
    fp_scores: list[float] = []
    negatives = negatives_hit = 0
    for case in scores:
        best = [-math.inf] * len(case.nodules)
        for center, score in zip(case.centers_mm, case.scores, strict=True):
            hit = False
            for n, truth in enumerate(case.nodules):
                if _hits(center, truth):
                    best[n] = max(best[n], score)
                    hit = True
            if not hit:
                fp_scores.append(score)
        nodules += list(zip(case.nodules, best, strict=True))
        for neg in case.hard_negatives:
            negatives += 1
            negatives_hit += any(_hits(c, neg) and s >= operating_threshold
                                 for c, s in zip(case.centers_mm, case.scores, strict=True))

    def summary(selected: list[tuple[Truth, float]]) -> dict[str, Any]:
        fp, sens = _curve([s for _, s in selected], fp_scores, scans)
        at = {f"sens@{r:g}": round(_sens_at(fp, sens, r), 4) for r in FP_RATES}
        hits = sum(1 for _, s in selected if s >= operating_threshold)
        return {"nodules": len(selected), "cpm": round(float(np.mean(list(at.values()))), 4) if selected else None,
                **(at if selected else dict.fromkeys(at)),
                "op_sensitivity": round(hits / len(selected), 4) if selected else None}

    overall = summary(nodules)
    fp_curve, sens_curve = _curve([s for _, s in nodules], fp_scores, scans)
    bands = [name for _, _, name in SIZE_BANDS_MM]
    return {
        **overall, "scans": len(scores),
        "op_threshold": operating_threshold,
        "op_fp_per_scan": round(sum(1 for s in fp_scores if s >= operating_threshold) / scans, 4),
        "curve": {"fp_per_scan": [round(v, 4) for v in fp_curve], "sensitivity": [round(v, 4) for v in sens_curve]},
        "by_size_band": {b: summary([(t, s) for t, s in nodules if size_band(t.diameter_mm) == b]) for b in bands
                         if any(size_band(t.diameter_mm) == b for t, _ in nodules)},
        "by_diameter": {name: summary(band) for lo, hi, name in DIAMETER_BANDS_MM
                        if (band := [(t, s) for t, s in nodules if lo <= t.diameter_mm < hi])},
        "at_least_6mm": summary([(t, s) for t, s in nodules if t.diameter_mm >= 6.0]),
        "by_type": {k: summary([(t, s) for t, s in nodules if t.kind == k])
                    for k in sorted({t.kind for t, _ in nodules})},
        "hard_negatives": negatives,
        "hard_negatives_redetected": round(negatives_hit / negatives, 4) if negatives else None,
        "seconds_per_scan": round(float(np.mean([c.seconds for c in scores])), 2) if scores else None,
    }


def evaluate_models(models: Mapping[str, Path], cases: Sequence[EvalCase], *, description: str,
                    detect_threshold: float = DETECT_THRESHOLD, threads: int = 2,
                    log: Callable[[str], None] = print) -> dict[str, Any]:
    """Score every model on the same cases; ``{"data": description, "models": {name: froc(...)}}``."""
    out: dict[str, Any] = {"data": description, "cases": len(cases),
                           "nodules": sum(len(c.nodules) for c in cases), "models": {}}
    for name, model_dir in models.items():
        manifest = load_manifest(Path(model_dir) / "manifest.yaml")
        scores = score_model(model_dir, cases, detect_threshold=detect_threshold, threads=threads, log=log)
        out["models"][name] = {"model": f"{manifest.id} {manifest.version}",
                               **froc(scores, manifest.output.threshold)}
    return out


def comparison_rows(evaluation: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The evaluation as table rows (metric, one column per model)."""
    models = evaluation["models"]
    names = list(models)
    keys = ["cpm", *(f"sens@{r:g}" for r in FP_RATES), "op_sensitivity", "op_fp_per_scan",
            "hard_negatives_redetected"]
    rows = [{"metric": k, **{n: models[n].get(k) for n in names}} for k in keys]
    rows.append({"metric": "sens@1 [>=6 mm]", **{n: models[n].get("at_least_6mm", {}).get("sens@1") for n in names}})
    seen: set[str] = set()  # "<6 mm" is a band of both size groups: one row
    for group in ("by_diameter", "by_size_band", "by_type"):
        subs = sorted({s for n in names for s in models[n].get(group, {})} - seen)
        seen |= set(subs)
        for sub in subs:
            for k in ("cpm", "op_sensitivity"):
                rows.append({"metric": f"{k} [{sub}]",
                             **{n: models[n].get(group, {}).get(sub, {}).get(k) for n in names}})
    return rows


def plot_froc(evaluation: Mapping[str, Any], ax: Any = None) -> Any:
    """FROC curves of every model (log false positives per scan); returns the matplotlib figure."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    for name, m in evaluation["models"].items():
        fp = np.maximum(np.asarray(m["curve"]["fp_per_scan"]), FP_RATES[0] / 2)
        ax.step(fp, m["curve"]["sensitivity"], where="post", label=f"{name} ({m['model']}), CPM {m['cpm']}")
    ax.set_xscale("log")
    ax.set_xlim(FP_RATES[0] / 2, FP_RATES[-1] * 1.5)
    ax.set_ylim(0, 1.02)
    ax.set_xticks(FP_RATES, [f"{r:g}" for r in FP_RATES])
    ax.set_xlabel("false positives per scan")
    ax.set_ylabel("sensitivity")
    ax.set_title(f"FROC: {evaluation['data']}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return ax.figure


def model_card_markdown(evaluation: Mapping[str, Any], name: str) -> str:
    """The FROC section of a model card for model ``name`` of ``evaluation`` (``evaluate_models``'s result)."""
    m = evaluation["models"][name]

    def band_row(group: str, metric: str) -> str:
        parts = m[group]
        return " / ".join(f"{_fmt(v[metric])} ({k}, {v['nodules']})" for k, v in parts.items())

    rows = [
        ("CPM (mean sensitivity at 1/8 ... 8 FP/scan)", f"**{_fmt(m['cpm'])}**"),
        *((f"sensitivity at {r:g} FP/scan", _fmt(m[f"sens@{r:g}"])) for r in FP_RATES),
        (f"sensitivity at 1 FP/scan, >= 6 mm ({m['at_least_6mm']['nodules']} nodules)",
         f"**{_fmt(m['at_least_6mm']['sens@1'])}**"),
        ("sensitivity at 1 FP/scan by diameter", band_row("by_diameter", "sens@1")),
        ("sensitivity at 1 FP/scan by type", band_row("by_type", "sens@1")),
        (f"operating point (probability >= {m['op_threshold']}): sensitivity, FP/scan",
         f"{_fmt(m['op_sensitivity'])}, {_fmt(m['op_fp_per_scan'])}"),
        ("seconds per scan (pre-processing + inference + post-processing)", _fmt(m["seconds_per_scan"])),
    ]
    return "\n".join(["| metric | value |", "| --- | --- |", *(f"| {k} | {v} |" for k, v in rows)])


def model_card_section(evaluation: Mapping[str, Any], name: str, command: str, figure: str, about_data: str,
                       targets: Mapping[str, float] | None = None) -> str:
    """The model card's whole FROC section for model ``name``: heading, how it was measured (``command``,
    ``about_data``), the table, the plot (``figure``, relative to the card) and, given ``targets`` (``cpm``,
    ``sens_ge_6mm``), whether they are met."""
    m = evaluation["models"][name]
    curve_end = m["curve"]["fp_per_scan"][-1]
    lines = [
        f"## FROC on {evaluation['data']} (LUNA16 definitions)",
        "",
        f"`{command}`. {about_data} A candidate hits a nodule when its centre lies within the nodule's radius "
        f"(at least {MIN_MATCH_RADIUS_MM} mm); candidates are the connected components at probability "
        f"{DETECT_THRESHOLD:g}, scored by their peak, run exactly as the service runs the model (its runtime "
        "and precision).",
    ]
    if curve_end < FP_RATES[-1]:
        lines.append(f"The curve ends at {curve_end:.2f} false positives per scan: the candidates run out there, so "
                     "the sensitivity at higher rates is the one at that point.")
    lines += ["", model_card_markdown(evaluation, name), "", f"![FROC]({figure})"]
    if targets:
        cpm, small = m["cpm"], m["at_least_6mm"]["sens@1"]
        met = cpm >= targets["cpm"] and small >= targets["sens_ge_6mm"]
        lines += ["", f"Against the project's targets (CPM ≥ {targets['cpm']:.2f}; sensitivity ≥ "
                      f"{targets['sens_ge_6mm']:.2f} for nodules ≥ 6 mm at 1 FP/scan): "
                      f"{'met' if met else 'not met'}, CPM {cpm:.3f} and {small:.3f}."]
    return "\n".join(lines) + "\n"


def _fmt(v: Any) -> str:
    return "n/a" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def comparison_markdown(evaluation: Mapping[str, Any]) -> str:
    """``comparison_rows`` as a markdown table (for notebooks and reports)."""
    rows = comparison_rows(evaluation)
    names = list(evaluation["models"])
    fmt = _fmt

    head = "| metric | " + " | ".join(f"{n} ({evaluation['models'][n]['model']})" for n in names) + " |"
    lines = [head, "| --- |" + " --- |" * len(names)]
    lines += ["| " + r["metric"] + " | " + " | ".join(fmt(r[n]) for n in names) + " |" for r in rows]
    return "\n".join(lines)
