"""The research API (``/api/v1``): dataset exports, model deployments (shadow, promotion, rollback) and the
shadow model's agreement with the radiologists.

Exports: researchers and admins. Deployment changes: admins. Reading deployments and shadow reports:
admins and researchers. Every change is audited (``tamsoat.research``, ``tamsoat.deployments``).
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import select

from review.auth import Principal, require_roles
from review.errors import ApiError
from tamsoat import deployments
from tamsoat.core import audit
from tamsoat.core.db import Database
from tamsoat.core.domain import Role
from tamsoat.core.settings import Settings
from tamsoat.core.tables import DatasetSnapshot
from tamsoat.research import eligible_studies, plan_export, queue_export, run_export, since_datetime, snapshot_row

router = APIRouter(prefix="/api/v1", tags=["research"])

Researcher = Annotated[Principal, Depends(require_roles(Role.RESEARCHER, Role.ADMIN))]
Admin = Annotated[Principal, Depends(require_roles(Role.ADMIN))]
SYNC_EXPORT_MAX_STUDIES = 5  # larger exports run as a job (202 + poll GET /datasets/{id})


class ExportIn(BaseModel):
    since: date | datetime | None = Field(default=None, description="only studies signed at or after this")
    snapshot_name: str | None = Field(default=None, max_length=64, description="default: snapshot-<time>-<hex>")
    background: bool | None = Field(default=None, description="run as a job; default: only when more than "
                                    f"{SYNC_EXPORT_MAX_STUDIES} studies are eligible")


class VersionIn(BaseModel):
    version: str = Field(min_length=1, max_length=32)


class ShadowIn(BaseModel):
    version: str | None = Field(default=None, max_length=32, description="null: stop running in shadow")


def _db(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


def _settings(request: Request) -> Settings:
    settings: Settings | None = getattr(request.app.state, "settings", None)
    if settings is None:
        raise ApiError(503, "not_configured", "the research routes need the service's settings")
    return settings


def _deployment_error(exc: deployments.DeploymentError) -> ApiError:
    return ApiError(exc.status, exc.code, str(exc))


@router.post("/datasets", status_code=201, summary="Export a de-identified research snapshot of signed studies")
def export(request: Request, body: ExportIn, user: Researcher) -> JSONResponse:
    from training.snapshot import SnapshotError

    settings, db = _settings(request), _db(request)
    since = since_datetime(body.since)
    with db.session() as s:
        eligible = eligible_studies(s, since)
    try:
        plan = plan_export(db, user.name, settings.datasets_path, since=since, name=body.snapshot_name,
                           remote=user.remote)
    except SnapshotError as exc:
        raise ApiError(409, "snapshot_exists", str(exc)) from exc
    background = body.background if body.background is not None else eligible > SYNC_EXPORT_MAX_STUDIES
    if background:
        queue_export(db, plan)
        wake = getattr(request.app.state, "wake_workers", None)
        if wake is not None:
            wake()
        return JSONResponse({"snapshot_id": plan.snapshot_id, "state": "queued", "eligible_studies": eligible},
                            status_code=202)
    try:
        run_export(db, settings, plan)
    except (SnapshotError, OSError) as exc:
        raise ApiError(500, "export_failed", f"the export failed: {exc}") from exc
    with db.session() as s:
        row = s.get(DatasetSnapshot, plan.snapshot_id)
        assert row is not None
        return JSONResponse(_jsonable(snapshot_row(row)), status_code=201)


@router.get("/datasets", summary="Research snapshots exported, newest first")
def list_datasets(request: Request, user: Researcher) -> list[dict[str, Any]]:
    with _db(request).session() as s:
        rows = s.scalars(select(DatasetSnapshot).order_by(DatasetSnapshot.created_at.desc()).limit(200)).all()
        return [snapshot_row(r) for r in rows]


@router.get("/datasets/{snapshot_id}", summary="One export: its state and counts")
def get_dataset(request: Request, snapshot_id: str, user: Researcher) -> dict[str, Any]:
    with _db(request).session() as s:
        row = s.get(DatasetSnapshot, snapshot_id)
        if row is None:
            raise ApiError(404, "snapshot_not_found", f"no snapshot {snapshot_id}")
        return snapshot_row(row)


def _registry(settings: Settings) -> Any:
    from inference.registry import Registry

    return Registry(settings.models_dir)


@router.get("/models", summary="Registered models: versions, the active one, the shadow one")
def list_models(request: Request, user: Researcher) -> list[dict[str, Any]]:
    settings = _settings(request)
    with _db(request).session() as s:
        return deployments.deployments(s, _registry(settings), settings.routing_file)


@router.post("/models/{model_id}/promote", summary="Make a registered version the one that analyses studies")
def promote(request: Request, model_id: str, body: VersionIn, user: Admin) -> dict[str, Any]:
    settings = _settings(request)
    try:
        with _db(request).session() as s:
            row = deployments.promote(s, _registry(settings), settings.routing_file, model_id, body.version,
                                      user.name, remote=user.remote)
            return {"model_id": model_id, "active_version": row.active_version,
                    "previous_version": row.previous_version, "shadow_version": row.shadow_version}
    except deployments.DeploymentError as exc:
        raise _deployment_error(exc) from exc


@router.post("/models/{model_id}/rollback", summary="Promote the version the last promotion replaced")
def rollback(request: Request, model_id: str, user: Admin) -> dict[str, Any]:
    settings = _settings(request)
    try:
        with _db(request).session() as s:
            row = deployments.rollback(s, _registry(settings), settings.routing_file, model_id, user.name,
                                       remote=user.remote)
            return {"model_id": model_id, "active_version": row.active_version,
                    "previous_version": row.previous_version, "shadow_version": row.shadow_version}
    except deployments.DeploymentError as exc:
        raise _deployment_error(exc) from exc


@router.put("/models/{model_id}/shadow", summary="Run a registered version in shadow (null: stop)")
def set_shadow(request: Request, model_id: str, body: ShadowIn, user: Admin) -> dict[str, Any]:
    settings = _settings(request)
    try:
        with _db(request).session() as s:
            row = deployments.set_shadow(s, _registry(settings), settings.routing_file, model_id, body.version,
                                         user.name, remote=user.remote)
            return {"model_id": model_id, "active_version": row.active_version, "shadow_version": row.shadow_version}
    except deployments.DeploymentError as exc:
        raise _deployment_error(exc) from exc


@router.get("/models/{model_id}/shadow-report",
            summary="How the shadow version's findings agree with radiologists' decisions on signed studies")
def shadow_report(request: Request, model_id: str, user: Researcher, version: str | None = None) -> dict[str, Any]:
    with _db(request).session() as s:
        report = deployments.shadow_report(s, model_id, version)
        audit.record(s, user.name, "shadow.report_viewed", model_id, remote=user.remote, version=version or "")
        return report


def _jsonable(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in data.items()}
