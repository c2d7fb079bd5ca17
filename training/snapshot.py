"""Research snapshots: reviewed (signed) studies -> a versioned, de-identified folder of volumes and labels.

A snapshot holds, for every signed study whose analysed series could be read::

    <snapshot>/
      manifest.json           id, format, counts, de-identification record, sha256 of every other file
      datasheet.md            source, counts, label definitions, de-identification method, intended use
      labels.json             one entry per case: pseudonym, new UIDs, shifted study date, findings as labels
      volumes/case-0001.npz   hu: int16 [k, j, i] Hounsfield units; affine: 4x4 voxel (i, j, k) -> patient LPS mm
      dicom/case-0001/*.dcm   the analysed series, de-identified (``training.deidentify``)

Labels: findings a radiologist accepted (unchanged or edited) or added are ``positive``; AI findings they
rejected are ``hard_negative`` with the coded reason. Centres are patient coordinates (LPS, mm): the Frame
of Reference UID is replaced, but ImagePositionPatient and ImageOrientationPatient are kept, so every
centre is valid in the de-identified series and in the volume's affine.

``collect_reviewed`` reads the database (the kernel's tables); ``write_snapshot`` only reads the spool
files it is given and writes the folder; ``read_snapshot`` / ``verify_snapshot`` are for researchers.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import secrets
import shutil
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from inference.dicom_series import SeriesError, build_volume, read_instances, stack_geometry
from inference.volume import Volume
from tamsoat.core.domain import Decision, StudyState
from tamsoat.core.tables import Analysis, Instance, Study
from training.deidentify import (
    ACTIONS,
    BASIC_PROFILE_CODE,
    METHOD_TEXT,
    MODIFIED_DATES_CODE,
    DeidReport,
    Keys,
    burned_in_annotation,
    deidentify,
    shift_date,
)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LABELS = "labels.json"
DATASHEET = "datasheet.md"
SNAPSHOT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
# The coded rejection reasons of the review pages (review.decisions.REJECT_REASONS); free text after
# "reason:" is a radiologist's own words and is never exported.
REJECT_REASON_CODES = ("vessel", "scar", "artefact", "duplicate", "outside_lung", "other")
SIZE_BANDS_MM = ((0.0, 6.0, "<6 mm"), (6.0, 8.0, "6-8 mm"), (8.0, 15.0, "8-15 mm"), (15.0, 1e9, ">=15 mm"))
POSITIVE, HARD_NEGATIVE = "positive", "hard_negative"


class SnapshotError(ValueError):
    """A snapshot cannot be written or read; the message says why."""


# --- what is read from the database ----------------------------------------------------------------

@dataclass(frozen=True)
class SourceFinding:
    source: str  # "ai" or "radiologist"
    decision: str  # "accept" / "reject" / ""
    edited: bool
    reason: str
    nodule_type: str
    center_mm: tuple[float, float, float]
    diameter_mm: float
    confidence: float
    decided_by: str
    ai_values: dict[str, Any] | None = None


@dataclass(frozen=True)
class SourceStudy:
    study_instance_uid: str
    patient_id: str
    signed_at: datetime
    series_instance_uid: str
    paths: tuple[Path, ...]
    model_id: str
    model_version: str
    findings: tuple[SourceFinding, ...]


def collect_reviewed(session: Session, spool_root: Path, *, since: datetime | None = None
                     ) -> tuple[list[SourceStudy], Counter[str]]:
    """The signed studies (signed at or after ``since``) with their clinical analysis and decisions, and the
    counts of studies left out and why (a study rejected as a whole has no decisions to learn from)."""
    excluded: Counter[str] = Counter()
    query = select(Study).where(Study.state.in_([StudyState.SIGNED.value, StudyState.REJECTED.value]))
    if since is not None:
        query = query.where(Study.signed_at >= since)
    out: list[SourceStudy] = []
    for study in session.scalars(query.order_by(Study.signed_at, Study.study_instance_uid)):
        if study.state == StudyState.REJECTED.value:
            excluded["study_rejected_for_ai_review"] += 1
            continue
        analysis = session.scalar(
            select(Analysis).options(selectinload(Analysis.findings)).where(
                Analysis.study_instance_uid == study.study_instance_uid, Analysis.current.is_(True),
                Analysis.role == "clinical"))
        if analysis is None:
            excluded["no_analysis"] += 1
            continue
        paths = session.scalars(select(Instance.path).where(
            Instance.series_instance_uid == analysis.series_instance_uid, Instance.current.is_(True))).all()
        findings = tuple(
            SourceFinding(source=f.source, decision=f.decision, edited=f.edited_at is not None, reason=f.reason,
                          nodule_type=f.nodule_type, center_mm=(f.center_x_mm, f.center_y_mm, f.center_z_mm),
                          diameter_mm=f.diameter_mm, confidence=f.confidence, decided_by=f.decided_by,
                          ai_values=dict(f.ai_values) if f.ai_values else None)
            for f in analysis.findings)
        out.append(SourceStudy(
            study_instance_uid=study.study_instance_uid, patient_id=study.patient_id,
            signed_at=study.signed_at or study.last_received_at, series_instance_uid=analysis.series_instance_uid,
            paths=tuple(Path(spool_root) / p for p in sorted(paths)), model_id=analysis.model_id,
            model_version=analysis.model_version, findings=findings))
    return out, excluded


# --- labels ------------------------------------------------------------------------------------------

def reason_code(reason: str) -> str:
    """The coded part of a rejection reason (``"vessel"``, ``"other"`` ...); free text is dropped."""
    head = reason.split(":", 1)[0].strip().lower()
    return head if head in REJECT_REASON_CODES else ("other" if reason.strip() else "unspecified")


def size_band(diameter_mm: float) -> str:
    return next(name for lo, hi, name in SIZE_BANDS_MM if lo <= diameter_mm < hi)


def finding_label(f: SourceFinding, keys: Keys, n: int) -> dict[str, Any] | None:
    """A finding as a label, or None when it carries no decision (it cannot happen in a signed study)."""
    if f.source == "radiologist":
        label, origin = POSITIVE, "radiologist_added"
    elif f.decision == Decision.ACCEPT.value:
        label, origin = POSITIVE, "ai_edited" if f.edited else "ai_accepted"
    elif f.decision == Decision.REJECT.value:
        label, origin = HARD_NEGATIVE, "ai_rejected"
    else:
        return None
    out: dict[str, Any] = {
        "id": n, "label": label, "origin": origin,
        "center_mm": [round(float(v), 3) for v in f.center_mm], "diameter_mm": round(float(f.diameter_mm), 3),
        "size_band": size_band(f.diameter_mm), "nodule_type": f.nodule_type or "unknown",
        "ai_confidence": None if f.source == "radiologist" else round(float(f.confidence), 4),
        "reader": keys.reader(f.decided_by) if f.decided_by else "",
    }
    if label == HARD_NEGATIVE:
        out["reason"] = reason_code(f.reason)
    if origin == "ai_edited" and f.ai_values:
        out["ai_values"] = {k: f.ai_values[k] for k in ("center_mm", "diameter_mm") if k in f.ai_values}
    return out


# --- writing -----------------------------------------------------------------------------------------

@dataclass
class SnapshotSummary:
    snapshot_id: str
    path: Path
    counts: dict[str, Any]
    manifest_sha256: str


def new_snapshot_id(now: datetime) -> str:
    return f"snapshot-{now:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _write_study(study: SourceStudy, case_id: str, root: Path, keys: Keys, test_fraction: float,
                 include_dicom: bool, report: DeidReport) -> dict[str, Any]:
    """Write one study's volume, de-identified series and labels; raise SeriesError if it cannot be read."""
    instances = read_instances(list(study.paths))
    headers = [inst.dataset for inst in instances]
    geometry = stack_geometry(headers)
    burned = {burned_in_annotation(h) for h in headers}
    if "YES" in burned:
        raise _Excluded("burned_in_annotation")
    volume = build_volume(instances, geometry=geometry)
    first = headers[geometry.order[0]]
    patient_key = str(first.get("PatientID", "") or study.patient_id or f"study:{study.study_instance_uid}")
    pseudonym = keys.pseudonym(patient_key)
    days = keys.date_offset_days(patient_key)
    if include_dicom:
        folder = root / "dicom" / case_id
        folder.mkdir(parents=True)
        for k, n in enumerate(geometry.order):
            ds = copy.deepcopy(headers[n])
            report.merge(deidentify(ds, keys, patient_key=patient_key))
            ds.preamble = b"\x00" * 128
            ds.save_as(folder / f"IM{k + 1:05d}.dcm", enforce_file_format=True)
    hu = np.clip(np.rint(volume.array), -32768, 32767).astype(np.int16)
    (root / "volumes").mkdir(exist_ok=True)
    np.savez_compressed(root / "volumes" / f"{case_id}.npz", hu=hu, affine=volume.affine.astype(np.float64))
    del volume, hu, instances, headers
    labels = [lab for n, f in enumerate(study.findings, start=1) if (lab := finding_label(f, keys, n))]
    return {
        "case_id": case_id,
        "patient": pseudonym,
        "split": keys.split(pseudonym, test_fraction),
        "study_instance_uid": keys.uid(study.study_instance_uid),
        "series_instance_uid": keys.uid(study.series_instance_uid),
        "frame_of_reference_uid": keys.uid(str(first.get("FrameOfReferenceUID", ""))),
        "study_date": shift_date(str(first.get("StudyDate", "")), days),
        "volume": f"volumes/{case_id}.npz",
        "dicom": f"dicom/{case_id}" if include_dicom else None,
        "shape_kji": list(geometry.shape),
        "spacing_mm": [round(float(s), 6) for s in Volume(np.empty((0, 0, 0), np.float32), geometry.affine).spacing],
        "burned_in_annotation": "NO" if burned == {"NO"} else "unknown",
        "model": {"id": study.model_id, "version": study.model_version},
        "findings": labels,
    }


class _Excluded(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def count_labels(cases: Sequence[dict[str, Any]]) -> dict[str, Any]:
    findings = [f for c in cases for f in c["findings"]]
    positives = [f for f in findings if f["label"] == POSITIVE]
    negatives = [f for f in findings if f["label"] == HARD_NEGATIVE]
    return {
        "cases": len(cases),
        "patients": len({c["patient"] for c in cases}),
        "splits": dict(Counter(c["split"] for c in cases)),
        "positives": len(positives),
        "hard_negatives": len(negatives),
        "by_origin": dict(Counter(f["origin"] for f in findings)),
        "positives_by_size_band": dict(Counter(f["size_band"] for f in positives)),
        "positives_by_type": dict(Counter(f["nodule_type"] for f in positives)),
        "hard_negatives_by_reason": dict(Counter(f["reason"] for f in negatives)),
        "burned_in_annotation": dict(Counter(c["burned_in_annotation"] for c in cases)),
    }


def write_snapshot(studies: Iterable[SourceStudy], out_parent: Path, *, snapshot_id: str | None = None,
                   secret: bytes | None = None, excluded: Counter[str] | None = None, since: str = "",
                   include_dicom: bool = True, test_fraction: float = 0.2, now: datetime | None = None,
                   log: Callable[[str], None] = lambda _m: None) -> SnapshotSummary:
    """Write a snapshot of ``studies`` into ``out_parent/<snapshot_id>`` and return its summary.

    ``secret`` (default: 32 fresh random bytes) keys the pseudonyms, new UIDs and date offsets; it is not
    written anywhere, so the same studies exported twice get different pseudonyms. The folder appears
    complete or not at all (written under a temporary name, then renamed).
    """
    now = now or datetime.now(UTC)
    snapshot_id = snapshot_id or new_snapshot_id(now)
    if not re.fullmatch(SNAPSHOT_ID_PATTERN, snapshot_id):
        raise SnapshotError(f"snapshot name {snapshot_id!r} is not allowed: use letters, digits, '.', '_', '-'")
    out_parent = Path(out_parent)
    final = out_parent / snapshot_id
    if final.exists():
        raise SnapshotError(f"{final} already exists; choose another snapshot name")
    keys = Keys(secret if secret is not None else secrets.token_bytes(32))
    skipped: Counter[str] = Counter(excluded or {})
    tmp = out_parent / f".{snapshot_id}.partial"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    report = DeidReport()
    cases: list[dict[str, Any]] = []
    models: Counter[str] = Counter()
    try:
        for study in studies:
            case_id = f"case-{len(cases) + 1:04d}"
            try:
                case = _write_study(study, case_id, tmp, keys, test_fraction, include_dicom, report)
            except _Excluded as exc:
                skipped[exc.reason] += 1
                shutil.rmtree(tmp / "dicom" / case_id, ignore_errors=True)
                continue
            except SeriesError:
                skipped["series_unreadable"] += 1
                shutil.rmtree(tmp / "dicom" / case_id, ignore_errors=True)
                continue
            cases.append(case)
            models[f"{study.model_id} {study.model_version}"] += 1
            log(f"{case_id}: {len(case['findings'])} labels")
        counts = {**count_labels(cases), "excluded": dict(skipped)}
        deid = {
            "profile": "DICOM PS3.15 Annex E, Basic Application Level Confidentiality Profile",
            "method": METHOD_TEXT,
            "codes": [{"scheme": "DCM", "value": v, "meaning": m} for v, m in (BASIC_PROFILE_CODE,
                                                                            MODIFIED_DATES_CODE)],
            "actions_applied": {a: sorted(k) for a, k in sorted(report.actions.items())},
            "unlisted_attributes_removed": sorted(report.unlisted_removed),
            "private_attributes_removed": report.private_removed,
            "pseudonyms": "keyed HMAC-SHA256 of the PatientID under a per-snapshot secret that is not kept",
            "dates": "shifted back by 30-395 days, one offset per patient (intervals kept); times kept",
        }
        labels = {"snapshot_id": snapshot_id, "format": FORMAT_VERSION, "coordinate_system": "DICOM patient LPS, mm",
                  "cases": cases}
        (tmp / LABELS).write_text(json.dumps(labels, indent=1, ensure_ascii=True) + "\n")
        (tmp / DATASHEET).write_text(datasheet(snapshot_id, now, since, counts, deid, dict(models)))
        files = {p.relative_to(tmp).as_posix(): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        manifest = {"snapshot_id": snapshot_id, "format": FORMAT_VERSION, "created_at": now.isoformat(),
                    "since": since, "counts": counts, "deidentification": deid, "models": dict(models),
                    "files": files}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, ensure_ascii=True) + "\n")
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return SnapshotSummary(snapshot_id, final, counts, sha256_file(final / MANIFEST))


def datasheet(snapshot_id: str, now: datetime, since: str, counts: dict[str, Any], deid: dict[str, Any],
              models: dict[str, int]) -> str:
    """The snapshot's datasheet (markdown): what it is, what is in it, how it was made, what it is for."""
    def table(title: str, data: dict[str, Any]) -> list[str]:
        rows = [f"| {k} | {v} |" for k, v in sorted(data.items())] or ["| (none) | 0 |"]
        return [f"| {title} | count |", "| --- | --- |", *rows, ""]

    actions = deid["actions_applied"]
    return "\n".join([
        f"# Datasheet — research snapshot {snapshot_id}",
        "",
        f"Created {now:%Y-%m-%d %H:%M} UTC by tamsoat's research export"
        + (f", studies signed since {since}" if since else "") + f". Format {FORMAT_VERSION}.",
        "",
        "## Source",
        "",
        "Chest CT studies received by this tamsoat installation, analysed by the lung-nodule model and signed by",
        "a radiologist. Only the series the model analysed is included. Studies a radiologist rejected as a",
        "whole, series that cannot be read, and series with burned-in annotation are left out (counts below).",
        "Models whose AI findings were reviewed: " + (", ".join(f"{m} ({n} studies)" for m, n in sorted(models.items()))
                                                       or "none") + ".",
        "",
        "## Counts",
        "",
        f"- cases (studies): {counts['cases']}, patients: {counts['patients']}, splits: {counts['splits']}",
        f"- positives: {counts['positives']}, hard negatives: {counts['hard_negatives']}",
        "",
        *table("origin", counts["by_origin"]),
        *table("positives by size band", counts["positives_by_size_band"]),
        *table("positives by nodule type", counts["positives_by_type"]),
        *table("hard negatives by reason", counts["hard_negatives_by_reason"]),
        *table("excluded studies, reason", counts["excluded"]),
        "## Label definitions",
        "",
        "- `positive`: a nodule in the final read. Origins: `ai_accepted` (AI finding accepted unchanged),",
        "  `ai_edited` (AI finding whose centre, size or type the radiologist corrected; the corrected values are",
        "  the label, the AI's are kept in `ai_values`), `radiologist_added` (a nodule the AI missed).",
        "- `hard_negative`: an AI finding the radiologist rejected; `reason` is the coded reason (vessel, scar,",
        "  artefact, duplicate, outside_lung, other, unspecified). Free-text comments are not exported.",
        "- `center_mm`: patient coordinates (DICOM LPS, mm) in the case's de-identified frame of reference",
        "  (the Frame of Reference UID is new; positions and orientation are unchanged, so centres stay valid).",
        "  `diameter_mm`: equivalent-sphere or reader-measured diameter. `size_band`: <6, 6-8, 8-15, >=15 mm.",
        "- `split`: train or test, drawn from the pseudonym (all studies of one patient share a split).",
        "- A nodule the AI missed and the radiologist did not add is not labelled: unlabelled lung is not",
        "  guaranteed to be nodule-free.",
        "",
        "## Files",
        "",
        "- `volumes/<case>.npz`: `hu` int16 array [slice, row, column] in Hounsfield units; `affine` 4x4 maps a",
        "  voxel index (column i, row j, slice k, 1) to patient LPS mm. Pre-process it with",
        "  `inference.preprocess` (resample to the model spacing, window) exactly as the service does.",
        "- `dicom/<case>/`: the analysed series, de-identified. `labels.json`: cases and labels.",
        "- `manifest.json`: counts, the de-identification record and the sha256 of every other file.",
        "",
        "## De-identification",
        "",
        f"- {deid['profile']}, with the Retain Longitudinal Temporal Information with Modified Dates Option.",
        f"- DeidentificationMethodCodeSequence: {', '.join(c['value'] + ' ' + c['meaning'] for c in deid['codes'])};",
        "  PatientIdentityRemoved YES; LongitudinalTemporalInformationModified MODIFIED.",
        f"- Patient name and ID: a pseudonym, {deid['pseudonyms']}: consistent within this snapshot,",
        "  different in any other snapshot, not reversible from the snapshot.",
        f"- Dates: {deid['dates']}. Birth date emptied; age, size and weight removed.",
        "- UIDs (study, series, instance, frame of reference): replaced by new UIDs derived with the same key.",
        "- Names of staff, institution, station, descriptions, comments, accession number: emptied or removed.",
        f"- Private attributes removed ({deid['private_attributes_removed']} elements). Attributes not in the",
        f"  action table are removed ({len(deid['unlisted_attributes_removed'])} kinds).",
        f"- Actions applied: {', '.join(f'{a}: {len(k)} attributes' for a, k in actions.items()) or 'none'}.",
        "- Burned-in annotation: series whose BurnedInAnnotation is YES are excluded; where the attribute is",
        "  absent the case says `unknown`: pixel data were not inspected (axial CT rarely carries burned-in",
        "  text, but check before any use outside this institution).",
        "- Radiologists appear only as pseudonymous reader ids.",
        "",
        "## Intended use",
        "",
        "Research on the lung-nodule detector inside the institution that produced it: training, fine-tuning",
        "and evaluating new model versions that run in shadow before an admin promotes them. Not for clinical",
        "decisions about these patients. Do not try to re-identify anyone, do not link it with other data sets,",
        "and do not share it outside the institution without its data-protection review.",
        "",
    ])


# --- reading -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Label:
    id: int
    label: str
    origin: str
    center_mm: tuple[float, float, float]
    diameter_mm: float
    size_band: str
    nodule_type: str
    ai_confidence: float | None
    reason: str = ""


@dataclass(frozen=True)
class SnapshotCase:
    case_id: str
    patient: str
    split: str
    study_date: str
    volume_path: Path
    labels: tuple[Label, ...]
    model: dict[str, str] = field(default_factory=dict)

    @property
    def positives(self) -> tuple[Label, ...]:
        return tuple(lab for lab in self.labels if lab.label == POSITIVE)

    @property
    def hard_negatives(self) -> tuple[Label, ...]:
        return tuple(lab for lab in self.labels if lab.label == HARD_NEGATIVE)

    def load_volume(self) -> Volume:
        """The case's volume in HU (float32) with its affine."""
        with np.load(self.volume_path) as data:
            return Volume(array=data["hu"].astype(np.float32), affine=data["affine"].astype(np.float64))


@dataclass(frozen=True)
class Snapshot:
    path: Path
    manifest: dict[str, Any]
    cases: tuple[SnapshotCase, ...]

    @property
    def snapshot_id(self) -> str:
        return str(self.manifest["snapshot_id"])

    def split(self, name: str) -> tuple[SnapshotCase, ...]:
        """The cases of one split (``train``, ``test``), or every case for ``all``."""
        return self.cases if name == "all" else tuple(c for c in self.cases if c.split == name)

    def labels_table(self) -> list[dict[str, Any]]:
        """One row per label, with its case: for tables and plots."""
        return [{"case_id": c.case_id, "patient": c.patient, "split": c.split, **asdict(lab)}
                for c in self.cases for lab in c.labels]


def verify_snapshot(path: Path) -> list[str]:
    """Problems with a snapshot folder: files missing, changed or not listed in the manifest (empty: intact)."""
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        return [f"cannot read {MANIFEST}: {exc}"]
    problems = []
    listed = manifest.get("files", {})
    for rel, expected in listed.items():
        f = path / rel
        if not f.is_file():
            problems.append(f"{rel} is missing")
        elif sha256_file(f) != expected:
            problems.append(f"{rel} has changed (sha256 differs)")
    for f in path.rglob("*"):
        rel = f.relative_to(path).as_posix()
        if f.is_file() and rel != MANIFEST and rel not in listed:
            problems.append(f"{rel} is not listed in the manifest")
    return problems


def read_snapshot(path: Path, *, verify: bool = True) -> Snapshot:
    """Open a snapshot; with ``verify`` every file's sha256 is checked first."""
    path = Path(path)
    if verify and (problems := verify_snapshot(path)):
        raise SnapshotError(f"snapshot {path} is not intact: {'; '.join(problems[:5])}")
    manifest = json.loads((path / MANIFEST).read_text())
    labels = json.loads((path / LABELS).read_text())
    if labels.get("format") != FORMAT_VERSION:
        raise SnapshotError(f"snapshot {path} has format {labels.get('format')}, not {FORMAT_VERSION}")
    cases = tuple(
        SnapshotCase(
            case_id=c["case_id"], patient=c["patient"], split=c["split"], study_date=c["study_date"],
            volume_path=path / c["volume"], model=dict(c.get("model", {})),
            labels=tuple(Label(id=f["id"], label=f["label"], origin=f["origin"],
                               center_mm=(float(f["center_mm"][0]), float(f["center_mm"][1]),
                                          float(f["center_mm"][2])),
                               diameter_mm=float(f["diameter_mm"]), size_band=f["size_band"],
                               nodule_type=f["nodule_type"], ai_confidence=f.get("ai_confidence"),
                               reason=f.get("reason", ""))
                         for f in c["findings"]))
        for c in labels["cases"])
    return Snapshot(path=path, manifest=manifest, cases=cases)


def action_table() -> dict[str, str]:
    """The de-identification action table (keyword -> action letter), for the datasheet and reviews."""
    return {k: v.value for k, v in sorted(ACTIONS.items())}
