"""Checks on what sign-off produces: the SR (dciodvfy, highdicom, content), the KOS and the FHIR bundle."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import highdicom as hd
import pydicom
import pytest
from fhir.resources.R4B.bundle import Bundle
from pydicom.dataset import Dataset


def dciodvfy_errors(path: Path) -> list[str]:
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.fail("dciodvfy (Debian package dicom3tools) is not installed: run scripts/setup")
    proc = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=120, check=False)
    return [line for line in (proc.stdout + proc.stderr).splitlines() if "Error" in line]


@dataclass
class Group:
    tracking_uid: str
    measurements: dict[str, float]
    person: str | None  # Person Observer Name within the group, if any
    has_algorithm: bool
    comments: list[str]


def _items(seq: Any) -> Any:
    for item in seq:
        yield item
        yield from _items(getattr(item, "ContentSequence", []))


def _code(item: Dataset) -> str | None:
    seq = item.get("ConceptNameCodeSequence")
    return str(seq[0].CodeValue) if seq else None


def read_sr(path: Path) -> tuple[Dataset, list[Group], list[str]]:
    """Parse a signed SR with highdicom; return it, its measurement groups and its root comments."""
    ds = pydicom.dcmread(path)
    sr = hd.sr.Comprehensive3DSR.from_dataset(ds)
    groups = []
    for g in sr.content.get_volumetric_roi_measurement_groups():
        items = list(g[0].ContentSequence)
        person = next((str(i.PersonName) for i in items if _code(i) == "121008"), None)
        groups.append(Group(
            tracking_uid=str(g.tracking_uid),
            measurements={m.name.meaning: float(m.value) for m in g.get_measurements()},
            person=person,
            has_algorithm=any(_code(i) == "111001" for i in _items(items)),
            comments=[str(i.TextValue) for i in items if _code(i) == "121106"],
        ))
    root_comments = [str(i.TextValue) for i in _items(ds.ContentSequence) if _code(i) == "121106"
                     and not str(i.TextValue).startswith("Nodule type")]
    return ds, groups, root_comments


def read_fhir(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Validate a bundle with the fhir.resources models; return the DiagnosticReport and Observations."""
    raw = path.read_text()
    Bundle.model_validate_json(raw)  # raises if any resource is invalid
    data = json.loads(raw)
    resources = [e["resource"] for e in data["entry"]]
    report = next(r for r in resources if r["resourceType"] == "DiagnosticReport")
    observations = [r for r in resources if r["resourceType"] == "Observation"]
    return report, observations
