"""The FastAPI application: mounts the stage routers, the error handlers and the health check."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from sqlalchemy import func, select, text

import tamsoat
from review.api import router as review_router
from review.errors import install_error_handlers
from review.sessions import load_or_create_secret
from review.web import install as install_web
from tamsoat.api_docs import install_api_docs
from tamsoat.core.db import Database
from tamsoat.core.domain import OutboxState
from tamsoat.core.settings import Settings
from tamsoat.core.tables import OutboxItem
from tamsoat.gateway_api import router as gateway_router
from tamsoat.research_api import router as research_router

HealthProbe = Callable[[], dict[str, Any]]


def create_app(db: Database, probe: HealthProbe | None = None, wake_workers: Callable[[], None] | None = None,
               settings: Settings | None = None) -> FastAPI:
    app = FastAPI(
        title="tamsoat", version=tamsoat.__version__, docs_url=None, redoc_url=None,
        description="On-premise AI screening: DICOM in, AI findings reviewed by a radiologist, signed reports out. "
                    "Every /api route needs `Authorization: Bearer <token>` (`tamsoat tokens create NAME`).",
    )
    app.state.db = db
    app.state.wake_workers = wake_workers
    app.state.settings = settings  # the research routes need the spool, models and datasets folders
    install_error_handlers(app)
    install_api_docs(app)
    app.include_router(review_router)
    app.include_router(gateway_router)  # outbox admin API, /metrics, DICOMweb STOW-RS
    app.include_router(research_router)  # dataset exports, model deployments, shadow reports (issue 7)
    # The radiologist's web pages (session login); without settings (tests) a per-process cookie key.
    secret = load_or_create_secret(settings.web_secret_path) if settings else secrets.token_bytes(32)
    install_web(app, db, secret=secret,
                spool_root=settings.spool_path if settings else None,
                session_hours=settings.web.session_hours if settings else 12.0,
                secure_cookies=settings.web.secure_cookies if settings else False,
                default_language=settings.web.default_language if settings else "en")

    @app.get("/healthz", tags=["operations"], summary="Liveness and readiness of the service's parts")
    def healthz() -> JSONResponse:
        checks: dict[str, Any] = {}
        try:
            with db.session() as s:
                s.execute(text("SELECT 1"))
                checks["outbox_pending"] = s.scalar(
                    select(func.count()).select_from(OutboxItem).where(OutboxItem.state == OutboxState.PENDING.value)
                )
                checks["outbox_dead"] = s.scalar(
                    select(func.count()).select_from(OutboxItem).where(OutboxItem.state == OutboxState.DEAD.value)
                )
            checks["database"] = "ok"
        except Exception as exc:  # the health page reports, it does not fail
            checks["database"] = f"error: {type(exc).__name__}"
        if probe is not None:
            checks.update(probe())
        healthy = checks["database"] == "ok" and all(
            v is not False for k, v in checks.items() if k.endswith(("_alive", "_listening", "_flowing"))
        )
        status = "ok" if healthy else "degraded"
        return JSONResponse({"status": status, "version": tamsoat.__version__, **checks},
                            status_code=200 if healthy else 503)

    return app
