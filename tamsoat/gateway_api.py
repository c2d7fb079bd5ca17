"""HTTP routes of the DICOM gateway: the outbox for administrators (``/api/v1/outbox``), Prometheus
``/metrics`` and DICOMweb STOW-RS (``/dicomweb/studies``).

Who may do what:

* ``admin``: the outbox (list, retry), metrics, STOW-RS.
* ``integration`` (a machine account: a modality, a PACS or VNA pushing by STOW-RS, a Prometheus
  scraper): STOW-RS and metrics only. It can add instances but read nothing back, so a leaked
  integration token exposes no patient data and cannot re-route results.

The protocol work is in ``dicom_gateway`` (``outbox``, ``stow``, ``ingest``); this module adds the
authentication and turns errors into HTTP answers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from dicom_gateway.ingest import Ingestor, Origin
from dicom_gateway.outbox import OutboxEntry, OutboxError, get_entry, list_entries, retry_item
from dicom_gateway.scp import ACCEPTED_TRANSFER_SYNTAXES, STORAGE_SOP_CLASSES
from dicom_gateway.stow import DICOM_JSON, PartOutcome, StowBadRequest, StowUnsupportedMedia, store_part, stow
from dicom_gateway.uids import is_valid_uid
from review.auth import Principal, require_roles
from review.errors import ApiError
from tamsoat.core.db import Database
from tamsoat.core.domain import OutboxState, Role
from tamsoat.observability import render_metrics

router = APIRouter()

Admin = Annotated[Principal, Depends(require_roles(Role.ADMIN))]
Machine = Annotated[Principal, Depends(require_roles(Role.ADMIN, Role.INTEGRATION))]

_ACCEPTED = frozenset(ACCEPTED_TRANSFER_SYNTAXES)


class OutboxItemOut(BaseModel):
    id: int
    destination: str
    state: OutboxState
    attempts: int
    last_status: str | None
    error: str
    next_attempt_at: datetime
    created_at: datetime
    sent_at: datetime | None
    committed_at: datetime | None
    sop_instance_uid: str
    study_instance_uid: str


def _out(e: OutboxEntry) -> OutboxItemOut:
    return OutboxItemOut(
        id=e.id, destination=e.destination, state=OutboxState(e.state), attempts=e.attempts,
        last_status=e.last_status_hex or None, error=e.error, next_attempt_at=e.next_attempt_at,
        created_at=e.created_at, sent_at=e.sent_at, committed_at=e.committed_at,
        sop_instance_uid=e.sop_instance_uid, study_instance_uid=e.study_instance_uid,
    )


def _db(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


def _outbox_error(exc: OutboxError) -> ApiError:
    return ApiError(404 if exc.code == "not_found" else 409, f"outbox_{exc.code}", exc.message)


# -- outbox ----------------------------------------------------------------------------------------

@router.get("/api/v1/outbox", tags=["gateway"], response_model=list[OutboxItemOut],
            summary="Results waiting to be sent, sent, or dead-lettered (with the reason), newest first")
def list_outbox(request: Request, user: Admin, state: OutboxState | None = None,
                destination: str | None = None, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                ) -> list[OutboxItemOut]:
    with _db(request).session() as s:
        return [_out(e) for e in list_entries(s, state.value if state else None, destination, limit)]


@router.get("/api/v1/outbox/{item_id}", tags=["gateway"], response_model=OutboxItemOut, summary="One outbox item")
def get_outbox_item(request: Request, item_id: int, user: Admin) -> OutboxItemOut:
    try:
        with _db(request).session() as s:
            return _out(get_entry(s, item_id))
    except OutboxError as exc:
        raise _outbox_error(exc) from exc


@router.post("/api/v1/outbox/{item_id}/retry", tags=["gateway"], response_model=OutboxItemOut, status_code=202,
             summary="Send a dead-lettered (or backing-off) item again now")
def retry_outbox_item(request: Request, item_id: int, user: Admin) -> OutboxItemOut:
    try:
        with _db(request).session() as s:
            entry = retry_item(s, item_id, user.name, remote=user.remote)
    except OutboxError as exc:
        raise _outbox_error(exc) from exc
    wake = getattr(request.app.state, "wake_workers", None)
    if wake is not None:
        wake()
    return _out(entry)


# -- metrics ---------------------------------------------------------------------------------------

@router.get("/metrics", tags=["operations"], response_class=Response,
            summary="Prometheus metrics (bearer token of an admin or integration user)")
def metrics(request: Request, user: Machine) -> Response:
    return Response(render_metrics(_db(request)), media_type=CONTENT_TYPE_LATEST)


# -- STOW-RS ---------------------------------------------------------------------------------------

async def _stow(request: Request, user: Principal, study: str | None) -> JSONResponse:
    ingestor: Ingestor | None = getattr(request.app.state, "ingestor", None)
    if ingestor is None:
        raise ApiError(503, "unavailable", "this process does not receive instances")
    if study is not None and not is_valid_uid(study):
        raise ApiError(400, "invalid_uid", "the study in the URL is not a valid UID")
    origin = Origin(calling_ae_title=user.name[:16], called_ae_title=getattr(request.app.state, "ae_title", ""),
                    peer_address=user.remote, source="stow")

    async def store(headers: dict[str, str], body: bytes) -> PartOutcome:
        return await run_in_threadpool(store_part, ingestor, headers, body, origin, study, _ACCEPTED,
                                       STORAGE_SOP_CLASSES)

    async def chunks() -> AsyncIterator[bytes]:
        async for chunk in request.stream():
            yield chunk

    try:
        result = await stow(chunks(), request.headers.get("content-type", ""), store)
    except StowUnsupportedMedia as exc:
        raise ApiError(415, "unsupported_media_type", str(exc)) from exc
    except StowBadRequest as exc:
        raise ApiError(400, "bad_request", str(exc)) from exc
    if result.http_status == 400:
        raise ApiError(400, "bad_request", "the request holds no parts")
    return JSONResponse(result.body, status_code=result.http_status, media_type=DICOM_JSON)


_STOW_DOC = ("DICOMweb STOW-RS: `multipart/related; type=\"application/dicom\"`, one DICOM Part-10 file per "
             "part. Answers a Store Instances Response Module (DICOM JSON): 200 all stored, 202 some stored, "
             "409 none stored; each failure has its Failure Reason.")


@router.post("/dicomweb/studies", tags=["dicomweb"], summary="Store instances (STOW-RS)", description=_STOW_DOC,
             response_class=JSONResponse)
async def stow_studies(request: Request, user: Machine) -> JSONResponse:
    return await _stow(request, user, None)


@router.post("/dicomweb/studies/{study_instance_uid}", tags=["dicomweb"], response_class=JSONResponse,
             summary="Store instances of one study (STOW-RS)",
             description=_STOW_DOC + " Instances of another study fail with Failure Reason 0xA901.")
async def stow_study(request: Request, study_instance_uid: str, user: Machine) -> JSONResponse:
    return await _stow(request, user, study_instance_uid)
