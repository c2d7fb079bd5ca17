"""The FastAPI application: mounts the stage routers, the error handlers and the health check."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from sqlalchemy import func, select, text

import tamsoat
from review.api import router as review_router
from review.errors import install_error_handlers
from tamsoat.core.db import Database
from tamsoat.core.domain import OutboxState
from tamsoat.core.tables import OutboxItem

HealthProbe = Callable[[], dict[str, Any]]


def create_app(db: Database, probe: HealthProbe | None = None, wake_workers: Callable[[], None] | None = None
               ) -> FastAPI:
    app = FastAPI(
        title="tamsoat", version=tamsoat.__version__,
        description="On-premise AI screening: DICOM in, AI findings reviewed by a radiologist, signed reports out. "
                    "Every /api route needs `Authorization: Bearer <token>` (`tamsoat tokens create NAME`).",
    )
    app.state.db = db
    app.state.wake_workers = wake_workers
    install_error_handlers(app)
    app.include_router(review_router)

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
            v is not False for k, v in checks.items() if k.endswith("_alive") or k.endswith("_listening")
        )
        status = "ok" if healthy else "degraded"
        return JSONResponse({"status": status, "version": tamsoat.__version__, **checks},
                            status_code=200 if healthy else 503)

    return app
