"""Lung-RADS v2022 (ACR) baseline category suggested from nodule size and type.

Only size and attenuation are known to the service, so this is a *suggestion* for the radiologist,
who may change it (features such as spiculation or growth raise a category; 0 and S are clinical).

Baseline screening thresholds (mean diameter, mm):

* solid: < 6 -> 2; 6 to < 8 -> 3; 8 to < 15 -> 4A; >= 15 -> 4B
* part-solid (the solid component is not measured here, so only the total size counts):
  < 6 -> 2; >= 6 -> 3 (a larger solid component would raise it to 4A/4B: the reader decides)
* ground-glass: < 30 -> 2; >= 30 -> 3
* no nodule: 1

A nodule whose type is not stated (the AI's own findings) is treated as solid, the most
conservative reading of its size.
"""

from __future__ import annotations

from collections.abc import Iterable

CATEGORIES = ("0", "1", "2", "3", "4A", "4B", "4X", "S")
_RANK = {"0": 0, "1": 1, "2": 2, "S": 2, "3": 3, "4A": 4, "4B": 5, "4X": 6}


def category_for(diameter_mm: float, nodule_type: str = "") -> str:
    if nodule_type == "ground_glass":
        return "3" if diameter_mm >= 30.0 else "2"
    if nodule_type == "part_solid":
        return "3" if diameter_mm >= 6.0 else "2"
    if diameter_mm < 6.0:
        return "2"
    if diameter_mm < 8.0:
        return "3"
    if diameter_mm < 15.0:
        return "4A"
    return "4B"


def suggest(nodules: Iterable[tuple[float, str]]) -> str:
    """The highest category over ``(diameter_mm, nodule_type)`` pairs; "1" when there are none."""
    best = "1"
    for diameter, kind in nodules:
        cat = category_for(diameter, kind)
        if rank(cat) > rank(best):
            best = cat
    return best


def rank(category: str) -> int:
    """Orders categories by suspicion (unknown: -1)."""
    return _RANK.get(category, -1)
