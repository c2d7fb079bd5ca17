"""Helpers for the research-loop tests: studies received through the gateway's ingest path, with AI
findings seeded (no model) or analysed by the real engine, and a canary search over exported files."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from pydicom.uid import generate_uid

from tamsoat.core.db import Database
from tamsoat.core.domain import StudyState
from tamsoat.core.tables import Analysis, Finding, Study
from tamsoat.research_demo import Identity, close_received, receive, write_study
from training.phantom import PhantomNodule


def seed_ready_study(db: Database, spool: Path, work: Path, ident: Identity, *, seed: int,
                     model: tuple[str, str] = ("lung-nodule-phantom", "0.1.0")
                     ) -> tuple[str, tuple[PhantomNodule, ...], list[int]]:
    """A study received and closed, then given an analysis as a detector would write it (no model run):
    AI findings on the first two true nodules (slightly off) and one false positive. Returns the study UID,
    the truth and the AI finding ids (true, true, false positive)."""
    paths, truth = write_study(work / f"in-{seed}", ident, seed=seed)
    uid = receive(db, spool, paths)
    close_received(db)
    now = datetime.now(UTC)
    with db.session() as s:
        study = s.get(Study, uid)
        assert study is not None
        study.state = StudyState.READY.value
        series = {i.series_instance_uid for i in study.instances}
        analysis = Analysis(study_instance_uid=uid, series_instance_uid=series.pop(), model_id=model[0],
                            model_version=model[1], weights_sha256="ab" * 32, device_uid="2.25.77",
                            input_sha256="cd" * 32, routing_rule="chest-ct", created_at=now, timings={})
        for n in truth[:2]:
            cx, cy, cz = n.center_mm
            analysis.findings.append(Finding(tracking_uid=generate_uid(), center_x_mm=cx + 0.5, center_y_mm=cy - 0.4,
                                             center_z_mm=cz, diameter_mm=n.diameter_mm * 1.1,
                                             volume_mm3=math.pi / 6 * n.diameter_mm ** 3, confidence=0.9))
        cx, cy, cz = truth[0].center_mm
        analysis.findings.append(Finding(tracking_uid=generate_uid(), center_x_mm=-cx, center_y_mm=cy + 20.0,
                                         center_z_mm=cz, diameter_mm=5.5, volume_mm3=87.0, confidence=0.55))
        s.add(analysis)
        s.flush()
        ids = [f.id for f in analysis.findings]
    return uid, truth, ids


def variants(text: str) -> set[bytes]:
    """A canary string as it could appear in a file: original, upper, lower; UTF-8, UTF-16, Latin-1."""
    out: set[bytes] = set()
    for form in {text, text.upper(), text.lower()}:
        for encoding in ("utf-8", "utf-16-le", "utf-16-be", "latin-1"):
            try:
                out.add(form.encode(encoding).lower())
            except UnicodeEncodeError:
                continue
    return out


def canaries_found(files: Iterable[Path], canaries: Sequence[str]) -> list[tuple[str, str]]:
    """(file, canary) for every canary found in any file (bytes, case-insensitive, several encodings)."""
    needles = {c: variants(c) for c in canaries}
    hits = []
    for f in files:
        data = f.read_bytes().lower()
        for canary, forms in needles.items():
            if any(form in data for form in forms):
                hits.append((str(f), canary))
    return hits
