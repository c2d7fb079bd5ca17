"""Looking at a research snapshot and a training run: summary tables and plots for the notebooks.

Everything here reads what ``training.snapshot`` and ``training.finetune`` wrote; matplotlib is imported
only when a plot is asked for.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from training.snapshot import HARD_NEGATIVE, POSITIVE, SIZE_BANDS_MM, Snapshot

ORIGINS = ("ai_accepted", "ai_edited", "radiologist_added", "ai_rejected")


def summary(snapshot: Snapshot) -> dict[str, Any]:
    """Counts a researcher looks at first (from the labels, checked against the manifest's counts)."""
    rows = snapshot.labels_table()
    positives = [r for r in rows if r["label"] == POSITIVE]
    negatives = [r for r in rows if r["label"] == HARD_NEGATIVE]
    diam = np.array([r["diameter_mm"] for r in positives]) if positives else np.zeros(0)
    return {
        "snapshot": snapshot.snapshot_id,
        "cases": len(snapshot.cases),
        "patients": len({c.patient for c in snapshot.cases}),
        "splits": dict(Counter(c.split for c in snapshot.cases)),
        "positives": len(positives),
        "hard_negatives": len(negatives),
        "origins": {o: sum(1 for r in rows if r["origin"] == o) for o in ORIGINS},
        "positive_diameter_mm": None if not len(diam) else {
            "min": round(float(diam.min()), 1), "median": round(float(np.median(diam)), 1),
            "max": round(float(diam.max()), 1)},
        "size_bands": {name: sum(1 for r in positives if r["size_band"] == name) for _, _, name in SIZE_BANDS_MM},
        "types": dict(Counter(r["nodule_type"] for r in positives)),
        "rejection_reasons": dict(Counter(r["reason"] for r in negatives)),
        "ai_kept_rate": _kept_rate(rows),
        "manifest_counts_agree": (snapshot.manifest["counts"]["positives"] == len(positives)
                                  and snapshot.manifest["counts"]["hard_negatives"] == len(negatives)),
    }


def _kept_rate(rows: list[dict[str, Any]]) -> float | None:
    ai = [r for r in rows if r["origin"] != "radiologist_added"]
    kept = [r for r in ai if r["label"] == POSITIVE]
    return round(len(kept) / len(ai), 3) if ai else None


def plot_overview(snapshot: Snapshot) -> Any:
    """Four panels: positive sizes by origin, nodule types, decisions on findings, rejection reasons."""
    import matplotlib.pyplot as plt

    rows = snapshot.labels_table()
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    positives = [r for r in rows if r["label"] == POSITIVE]
    bins = np.linspace(0, max([30.0, *(r["diameter_mm"] for r in positives)]), 16)
    origins = [o for o in ORIGINS[:3] if any(r["origin"] == o for r in positives)]
    axes[0].hist([[r["diameter_mm"] for r in positives if r["origin"] == o] for o in origins] or [[]], bins=bins,
                 stacked=True, label=origins or None)
    axes[0].set_xlabel("diameter (mm)")
    axes[0].set_ylabel("positives")
    axes[0].set_title("Sizes of positives")
    if origins:
        axes[0].legend(fontsize=7)
    _bars(axes[1], Counter(r["nodule_type"] for r in positives), "Nodule types (positives)")
    _bars(axes[2], Counter(r["origin"] for r in rows), "Decisions on findings")
    _bars(axes[3], Counter(r["reason"] for r in rows if r["label"] == HARD_NEGATIVE), "Why AI findings were rejected")
    fig.suptitle(f"{snapshot.snapshot_id}: {len(snapshot.cases)} cases")
    fig.tight_layout()
    return fig


def _bars(ax: Any, counts: Counter[str], title: str) -> None:
    names = sorted(counts) or ["(none)"]
    ax.bar(range(len(names)), [counts.get(n, 0) for n in names])
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set_title(title)


def plot_case(snapshot: Snapshot, case_id: str | None = None, window: tuple[float, float] = (-1350.0, 150.0)) -> Any:
    """An axial slice of a case through its first label, every label on that slice circled
    (green: positive, red: hard negative)."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Circle

    case = next((c for c in snapshot.cases if c.case_id == case_id), None) if case_id else next(
        (c for c in snapshot.cases if c.labels), snapshot.cases[0])
    if case is None:
        raise KeyError(f"no case {case_id} in {snapshot.snapshot_id}")
    volume = case.load_volume()
    first = case.labels[0].center_mm if case.labels else None
    k = int(np.clip(round(float(volume.patient_to_index(first)[2])), 0, volume.array.shape[0] - 1)) if first else (
        volume.array.shape[0] // 2)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.imshow(volume.array[k], cmap="gray", vmin=window[0], vmax=window[1])
    si, sj, _ = volume.spacing
    for lab in case.labels:
        i, j, kk = volume.patient_to_index(lab.center_mm)
        if abs(kk - k) * volume.spacing[2] <= lab.diameter_mm / 2:
            ax.add_patch(Circle((i, j), radius=lab.diameter_mm / 2 / min(si, sj) + 2, fill=False, lw=1.5,
                                color="lime" if lab.label == POSITIVE else "red"))
    ax.set_title(f"{case.case_id} ({case.patient}), slice {k}")
    ax.axis("off")
    return fig


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_training(run_dir: Path) -> Any:
    """Training loss and validation Dice of a run (``metrics.jsonl``)."""
    import matplotlib.pyplot as plt

    records = read_metrics(run_dir)
    train = [r for r in records if "loss" in r]
    val = [r for r in records if "val_dice" in r]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    a.plot([r["step"] for r in train], [r["loss"] for r in train], marker=".")
    a.set_xlabel("step")
    a.set_ylabel("loss (BCE + Dice)")
    a.set_title("training loss")
    b.plot([r["step"] for r in val], [r["val_dice"] for r in val], marker="o")
    b.set_xlabel("step")
    b.set_ylabel("Dice")
    b.set_title("validation Dice (phantom patches)")
    fig.tight_layout()
    return fig
