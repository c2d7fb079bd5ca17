"""Model deployments: which registered version analyses studies, which one runs in shadow beside it,
promotion and rollback, the shadow task, and the shadow model's agreement with the radiologists.

* The active version of a model is the ``model_deployments`` row's ``active_version``; without a row, the
  routing rule's ``model_version`` or the newest registered version (the behaviour before deployments).
  Registering a version through ``register_version`` first pins the version in use, so a new version never
  goes live by being registered: only ``promote`` changes it (audited; ``rollback`` promotes the previous
  version again).
* A shadow version (``shadow_version``) runs after every clinical analysis of that model (job
  ``shadow_analyze``). Its analysis is stored with ``role = "shadow"`` and ``current = False``: every
  clinical query (worklist, viewer, API, reports) reads current analyses only, so a shadow result is never
  shown, decided on or reported.
* ``shadow_report`` compares shadow findings with the radiologists' decisions on the clinical findings of
  signed studies.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from inference.manifest import version_key
from tamsoat.core import audit, queue
from tamsoat.core.db import Database
from tamsoat.core.domain import AnalysisRole, Decision, JobKind, StudyState
from tamsoat.core.settings import Settings
from tamsoat.core.tables import Analysis, Finding, Instance, ModelDeployment, Study

if TYPE_CHECKING:
    from inference.registry import RegisteredModel, Registry
    from tamsoat.tasks import TaskContext

log = logging.getLogger(__name__)

CLINICAL, SHADOW = AnalysisRole.CLINICAL.value, AnalysisRole.SHADOW.value
SHADOW_ANALYZE = JobKind.SHADOW_ANALYZE.value
MATCH_MIN_RADIUS_MM = 2.5


class DeploymentError(ValueError):
    """A deployment change that cannot be made; ``code`` is stable (API error code)."""

    def __init__(self, code: str, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


# --- reading the deployment --------------------------------------------------------------------------

def default_version(registry: Registry, routing_file: Path, model_id: str) -> str:
    """The version routing uses without a deployment row: the first rule's pin, or the newest version."""
    from inference.routing import load_rules

    pinned = next((r.model_version for r in load_rules(routing_file).rules
                   if r.model == model_id and r.model_version), None)
    return registry.get(model_id, pinned).manifest.version


def active_version(s: Session, registry: Registry, routing_file: Path, model_id: str) -> str:
    row = s.get(ModelDeployment, model_id)
    return row.active_version if row is not None else default_version(registry, routing_file, model_id)


class DeployedVersions:
    """The engine's ``resolve_version``: the deployment row decides, else the rule's version (or newest)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def __call__(self, model_id: str, rule_version: str | None) -> str | None:
        with self.db.session() as s:
            row = s.get(ModelDeployment, model_id)
            return row.active_version if row is not None else rule_version


def _verified(registry: Registry, model_id: str, version: str) -> RegisteredModel:
    from inference.registry import ModelIntegrityError, ModelNotFoundError

    registry.refresh()
    try:
        return registry.verify(model_id, version)
    except ModelNotFoundError as exc:
        raise DeploymentError("model_not_found", str(exc), 404) from exc
    except ModelIntegrityError as exc:
        raise DeploymentError("model_integrity", str(exc)) from exc


def _row(s: Session, registry: Registry, routing_file: Path, model_id: str, actor: str) -> ModelDeployment:
    """The model's deployment row, made (pinning the version in use) when there is none."""
    from inference.registry import ModelNotFoundError

    row = s.get(ModelDeployment, model_id)
    if row is None:
        try:
            current = default_version(registry, routing_file, model_id)
        except ModelNotFoundError as exc:
            raise DeploymentError("model_not_found", str(exc), 404) from exc
        row = ModelDeployment(model_id=model_id, active_version=current, previous_version="", shadow_version="",
                              updated_at=datetime.now(UTC), updated_by=actor)
        s.add(row)
        s.flush()
        audit.record(s, actor, "model.deployment_pinned", model_id, version=current)
    return row


def deployments(s: Session, registry: Registry, routing_file: Path) -> list[dict[str, Any]]:
    """Every registered model with its versions, the active one, the previous one and the shadow one."""
    from inference.registry import ModelNotFoundError

    out = []
    for model_id in registry.model_ids():
        row = s.get(ModelDeployment, model_id)
        try:
            active = row.active_version if row else default_version(registry, routing_file, model_id)
        except ModelNotFoundError:
            active = ""
        out.append({"model_id": model_id, "versions": registry.versions(model_id), "active_version": active,
                    "pinned": row is not None, "previous_version": row.previous_version if row else "",
                    "shadow_version": row.shadow_version if row else "",
                    "updated_at": row.updated_at.isoformat() if row else None,
                    "updated_by": row.updated_by if row else ""})
    return out


# --- changing it ---------------------------------------------------------------------------------------

def promote(s: Session, registry: Registry, routing_file: Path, model_id: str, version: str, actor: str, *,
            remote: str = "", action: str = "model.promoted") -> ModelDeployment:
    """Make ``version`` the one routing uses (its files verified first); audited, reversible."""
    _verified(registry, model_id, version)
    row = _row(s, registry, routing_file, model_id, actor)
    if row.active_version == version:
        raise DeploymentError("already_active", f"{model_id} {version} is already the active version")
    before = row.active_version
    row.previous_version, row.active_version = before, version
    if row.shadow_version == version:
        row.shadow_version = ""  # it is the clinical model now
    row.updated_at, row.updated_by = datetime.now(UTC), actor
    audit.record(s, actor, action, model_id, remote=remote, version=version, previous=before)
    return row


def rollback(s: Session, registry: Registry, routing_file: Path, model_id: str, actor: str, *,
             remote: str = "") -> ModelDeployment:
    """Promote the version that the last promotion replaced."""
    row = s.get(ModelDeployment, model_id)
    if row is None or not row.previous_version:
        raise DeploymentError("nothing_to_roll_back", f"{model_id} has no previous version to roll back to")
    return promote(s, registry, routing_file, model_id, row.previous_version, actor, remote=remote,
                   action="model.rolled_back")


def set_shadow(s: Session, registry: Registry, routing_file: Path, model_id: str, version: str | None,
               actor: str, *, remote: str = "") -> ModelDeployment:
    """Run ``version`` in shadow beside the active version (None: stop the shadow runs)."""
    row = _row(s, registry, routing_file, model_id, actor)
    before = row.shadow_version
    if version is None:
        row.shadow_version = ""
    else:
        _verified(registry, model_id, version)
        if version == row.active_version:
            raise DeploymentError("already_active", f"{model_id} {version} is the active version; a shadow "
                                  "version must be another one")
        row.shadow_version = version
    row.updated_at, row.updated_by = datetime.now(UTC), actor
    audit.record(s, actor, "model.shadow_set" if version else "model.shadow_cleared", model_id, remote=remote,
                 version=version or "", previous=before)
    return row


def register_version(db: Database, settings: Settings, src: Path, version: str, actor: str, *,
                     model_id: str | None = None) -> RegisteredModel:
    """Register the model folder ``src`` as ``version`` in the service's models folder. The version in use is
    pinned first (when the model exists), so the new one does not go live until it is promoted."""
    import yaml

    from inference.registry import Registry
    from training.register import register_model

    declared = model_id or str((yaml.safe_load((Path(src) / "manifest.yaml").read_text()) or {}).get("id", ""))
    registry = Registry(settings.models_dir)
    with db.session() as s:
        if declared in registry.model_ids():
            _row(s, registry, settings.routing_file, declared, actor)
    registered = register_model(src, settings.models_dir, version=version, model_id=declared)
    with db.session() as s:
        audit.record(s, actor, "model.registered", declared, version=version,
                     device_uid=registered.manifest.device_uid, weights_sha256=registered.manifest.weights_sha256)
    return registered


# --- the shadow run ----------------------------------------------------------------------------------

def queue_shadow(s: Session, analysis: Analysis) -> None:
    """After a clinical analysis: queue the shadow version's run on the same series, if one is set."""
    row = s.get(ModelDeployment, analysis.model_id)
    if row is None or not row.shadow_version or row.shadow_version == analysis.model_version:
        return
    queue.enqueue(s, SHADOW_ANALYZE, str(analysis.id),
                  {"model_id": analysis.model_id, "version": row.shadow_version})


def shadow_analyze(ctx: TaskContext, key: str, payload: dict[str, Any]) -> None:
    """Run the shadow version on the series of clinical analysis ``key`` and store it as a shadow analysis.

    Nothing about the study changes: its state, its current analysis and its reports are the clinical ones.
    A clinical analysis superseded meanwhile (the study was re-opened) is not shadowed.
    """
    from inference.pipeline import analyze_series

    model_id, version = str(payload["model_id"]), str(payload["version"])
    with ctx.db.session() as s:
        clinical = s.get(Analysis, int(key))
        if clinical is None or not clinical.current or clinical.role != CLINICAL:
            log.info("shadow.skipped analysis=%s reason=superseded", key)
            return
        study_uid, clinical_id = clinical.study_instance_uid, clinical.id
        paths = [ctx.spool_root / p for p in s.scalars(select(Instance.path).where(
            Instance.series_instance_uid == clinical.series_instance_uid, Instance.current.is_(True)))]
    try:
        model = ctx.analyzer.load_model(model_id, version)
        result = analyze_series(paths, model)
    except Exception as exc:
        with ctx.db.session() as s:
            audit.record(s, "system", "shadow.failed", study_uid, model=model_id, version=version,
                         error=type(exc).__name__)
        raise
    with ctx.db.session() as s:
        clinical = s.get(Analysis, clinical_id)
        if clinical is None or not clinical.current:
            log.info("shadow.discarded analysis=%s reason=superseded", key)
            return
        shadow = Analysis(
            study_instance_uid=study_uid, series_instance_uid=result.series_instance_uid,
            model_id=result.identity.model_id, model_version=result.identity.version,
            weights_sha256=result.identity.weights_sha256, device_uid=result.identity.device_uid,
            input_sha256=result.input_sha256, routing_rule=clinical.routing_rule, current=False, role=SHADOW,
            shadow_of_id=clinical.id, created_at=datetime.now(UTC), timings=dict(result.timings))
        for det in result.detections:
            shadow.findings.append(Finding(
                tracking_uid=generate_uid(), label=det.label, center_x_mm=det.center_mm[0],
                center_y_mm=det.center_mm[1], center_z_mm=det.center_mm[2], diameter_mm=det.diameter_mm,
                volume_mm3=det.volume_mm3, confidence=det.confidence))
        s.add(shadow)
        audit.record(s, "system", "shadow.completed", study_uid, model=model_id, version=version,
                     findings=len(result.detections), clinical_analysis=clinical_id)
    log.info("shadow.completed study=%s model=%s version=%s findings=%d", study_uid, model_id, version,
             len(result.detections))


# --- agreement with the radiologists ------------------------------------------------------------------

@dataclass(frozen=True)
class Point:
    center_mm: tuple[float, float, float]
    diameter_mm: float


def _match(p: Point, candidates: Sequence[Point]) -> int | None:
    """The index of the nearest candidate whose radius (at least 2.5 mm) contains ``p``'s centre."""
    best, best_d = None, math.inf
    for n, c in enumerate(candidates):
        d = math.dist(p.center_mm, c.center_mm)
        if d <= max(c.diameter_mm / 2.0, MATCH_MIN_RADIUS_MM) and d < best_d:
            best, best_d = n, d
    return best


def agreement(clinical: Sequence[Finding], shadow: Sequence[Finding]) -> dict[str, int]:
    """Compare one study's shadow findings with the radiologist's decisions on its clinical findings.

    Positives: findings accepted (unchanged or edited) or added by the radiologist; rejected: AI findings the
    radiologist rejected. A shadow finding is ``agree`` (matches a positive), ``disagree`` (matches a rejected
    finding) or ``extra`` (matches nothing the radiologist saw). For the positives: how many the shadow
    model found, how many the clinical model had found, and how many of the radiologist's additions (the
    clinical model's misses) the shadow model found.
    """
    def pt(f: Finding) -> Point:
        return Point((f.center_x_mm, f.center_y_mm, f.center_z_mm), f.diameter_mm)

    positives = [f for f in clinical if f.decision == Decision.ACCEPT.value]
    rejected = [f for f in clinical if f.source == "ai" and f.decision == Decision.REJECT.value]
    pos_pts, rej_pts = [pt(f) for f in positives], [pt(f) for f in rejected]
    out = {"shadow_findings": len(shadow), "agree": 0, "disagree": 0, "extra": 0, "positives": len(positives),
           "positives_found_by_shadow": 0, "positives_found_by_clinical": 0, "added": 0,
           "added_found_by_shadow": 0, "rejected": len(rejected), "rejected_repeated_by_shadow": 0}
    found_pos: set[int] = set()
    found_rej: set[int] = set()
    for f in shadow:
        p = pt(f)
        if (n := _match(p, pos_pts)) is not None:
            out["agree"] += 1
            found_pos.add(n)
        elif (n := _match(p, rej_pts)) is not None:
            out["disagree"] += 1
            found_rej.add(n)
        else:
            out["extra"] += 1
    out["positives_found_by_shadow"] = len(found_pos)
    out["rejected_repeated_by_shadow"] = len(found_rej)
    for n, f in enumerate(positives):
        if f.source == "ai":
            out["positives_found_by_clinical"] += 1
        else:
            out["added"] += 1
            out["added_found_by_shadow"] += n in found_pos
    return out


def shadow_report(s: Session, model_id: str, version: str | None = None) -> dict[str, Any]:
    """The agreement of a model's shadow runs with the radiologists, over the signed studies.

    ``version``: one shadow version (default: every version that ran in shadow, each reported separately).
    """
    query = select(Analysis).options(selectinload(Analysis.findings)).where(
        Analysis.role == SHADOW, Analysis.model_id == model_id)
    if version is not None:
        query = query.where(Analysis.model_version == version)
    per_version: dict[str, dict[str, Any]] = {}
    for shadow in s.scalars(query.order_by(Analysis.id)):
        entry = per_version.setdefault(shadow.model_version, {
            "version": shadow.model_version, "studies_compared": 0, "studies_pending_review": 0,
            "studies_superseded": 0, "totals": {}, "studies": []})
        clinical = s.get(Analysis, shadow.shadow_of_id) if shadow.shadow_of_id else None
        study = s.get(Study, shadow.study_instance_uid)
        if clinical is None or not clinical.current or study is None:
            entry["studies_superseded"] += 1
            continue
        if study.state != StudyState.SIGNED.value:
            entry["studies_pending_review"] += 1
            continue
        counts = agreement(clinical.findings, shadow.findings)
        entry["studies_compared"] += 1
        for k, v in counts.items():
            entry["totals"][k] = entry["totals"].get(k, 0) + v
        entry["studies"].append({"study_instance_uid": study.study_instance_uid, "clinical_analysis": clinical.id,
                                 "clinical_version": clinical.model_version, "shadow_analysis": shadow.id,
                                 **counts})
    for entry in per_version.values():
        t = entry["totals"]
        pos = t.get("positives", 0)
        entry["rates"] = {
            "shadow_sensitivity": round(t["positives_found_by_shadow"] / pos, 3) if pos else None,
            "clinical_sensitivity": round(t["positives_found_by_clinical"] / pos, 3) if pos else None,
            "shadow_agreement": round(t["agree"] / t["shadow_findings"], 3) if t.get("shadow_findings") else None,
            "extra_per_study": round(t["extra"] / entry["studies_compared"], 3) if entry["studies_compared"] else None,
        }
    versions = sorted(per_version.values(), key=lambda e: version_key(e["version"]))
    return {"model_id": model_id, "match_rule": f"a shadow finding matches a reviewed finding when its centre lies "
            f"within that finding's radius (at least {MATCH_MIN_RADIUS_MM} mm)", "versions": versions}
