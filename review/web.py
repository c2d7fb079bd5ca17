"""The radiologist's web pages: login, worklist, viewer, decisions, sign-off; admin audit and monitoring.

Role matrix (enforced on every route by ``page_user`` / ``json_user``):

| route | radiologist | admin | researcher |
| --- | --- | --- | --- |
| worklist, viewer, slices (read) | yes | yes (read only) | no |
| claim, decisions, add, sign, reject study | yes | no | no |
| break another reader's claim | no | yes | no |
| audit trail, export | no | yes | no |
| model monitoring (counts only, no patient data) | no | yes | yes |

HTML is rendered by Jinja2 with autoescaping on, so text from DICOM headers (patient names,
descriptions) is always escaped; pages send a strict Content-Security-Policy (scripts and styles
only from this server, no inline script).
"""

from __future__ import annotations

import csv
import hmac
import io
import json
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlencode

import jinja2
from fastapi import APIRouter, Depends, FastAPI, Form, Query, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from review import decisions, lungrads
from review.decisions import Actor
from review.errors import ApiError
from review.i18n import LANGUAGES, script_messages, translator
from review.imaging import SeriesCache, SeriesGeometry
from review.sessions import (
    CSRF_FIELD,
    LANG_COOKIE,
    LOGIN_COOKIE,
    SESSION_COOKIE,
    LoginRequired,
    PageForbidden,
    SessionManager,
    WebUser,
    check_csrf,
    json_user,
    page_user,
    sessions_of,
)
from tamsoat.core import audit
from tamsoat.core.db import Database
from tamsoat.core.domain import Decision, NoduleType, Role, StudyState
from tamsoat.core.tables import Analysis, AuditEvent, Finding, Instance, Study, User

HERE = Path(__file__).resolve().parent
RAD, ADMIN, RESEARCHER = Role.RADIOLOGIST, Role.ADMIN, Role.RESEARCHER

ReaderPage = Annotated[WebUser, Depends(page_user(RAD, ADMIN))]
AdminPage = Annotated[WebUser, Depends(page_user(ADMIN))]
MonitorPage = Annotated[WebUser, Depends(page_user(ADMIN, RESEARCHER))]
AnyPage = Annotated[WebUser, Depends(page_user(RAD, ADMIN, RESEARCHER))]
ReaderJson = Annotated[WebUser, Depends(json_user(RAD, ADMIN))]
RadWrite = Annotated[WebUser, Depends(json_user(RAD, csrf=True))]
AdminWrite = Annotated[WebUser, Depends(json_user(ADMIN, csrf=True))]

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")

router = APIRouter(include_in_schema=False)
_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=True,  # every {{ value }} is HTML-escaped: DICOM text can never become markup
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def install(app: FastAPI, db: Database, *, secret: bytes, spool_root: Path | None, session_hours: float = 12.0,
            secure_cookies: bool = False, default_language: str = "en") -> None:
    """Mount the pages, their JSON endpoints and static files on ``app``."""
    app.state.sessions = SessionManager(db, secret, hours=session_hours, secure=secure_cookies,
                                        default_language=default_language)
    app.state.spool_root = spool_root
    app.state.series_cache = SeriesCache()
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.include_router(router)

    @app.exception_handler(LoginRequired)
    async def _login(_request: Request, exc: LoginRequired) -> Response:
        return RedirectResponse(f"/login?next={quote(exc.next_url, safe='')}", status_code=303)

    @app.exception_handler(PageForbidden)
    async def _forbidden(request: Request, exc: PageForbidden) -> Response:
        t = translator(exc.user.language)
        return _render(request, "error.html", exc.user, status_code=403, title=t("err.forbidden.title"),
                       message=t("err.forbidden", role=t(f"role.{exc.user.role.value}")))

    @app.middleware("http")
    async def _headers(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        path = request.url.path
        if not path.startswith(("/api/", "/docs", "/redoc", "/openapi.json")):
            response.headers.setdefault("Content-Security-Policy", CSP)
            response.headers.setdefault("X-Content-Type-Options", "nosniff")
            response.headers.setdefault("Referrer-Policy", "same-origin")
            response.headers.setdefault("X-Frame-Options", "DENY")
            if not path.startswith("/static/"):
                response.headers.setdefault("Cache-Control", "no-store")
        return response


# --- helpers --------------------------------------------------------------------------------------

def _db(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


def _render(request: Request, template: str, user: WebUser | None, *, status_code: int = 200,
            lang: str | None = None, **context: Any) -> HTMLResponse:
    language = lang or (user.language if user else sessions_of(request).language_for(request))
    html = _env.get_template(template).render(
        t=translator(language), lang=language, languages=LANGUAGES, user=user, path=request.url.path,
        full_path=request.url.path + (f"?{request.url.query}" if request.url.query else ""),
        csrf=user.csrf_token if user else "", role_label=translator(language)(f"role.{user.role.value}") if user
        else "", **context)
    return HTMLResponse(html, status_code=status_code)


def _actor(user: WebUser) -> Actor:
    return Actor(user.name, user.remote)


def _safe_next(target: str | None) -> str:
    """Only same-site paths: never redirect to another host after login."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def _fmt_time(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M") if value else ""


def _fmt_da(value: str) -> str:
    return f"{value[:4]}-{value[4:6]}-{value[6:8]}" if len(value) == 8 and value.isdigit() else value


def _pn(value: str) -> str:
    """A DICOM PN for display: FAMILY^GIVEN -> FAMILY, GIVEN (still escaped by the template)."""
    family, _, rest = value.partition("^")
    given = " ".join(p for p in rest.split("^") if p)
    return f"{family}, {given}" if given else family


# --- login, logout, language ----------------------------------------------------------------------

@router.get("/login")
def login_page(request: Request, next: str = "/", error: str = "") -> Response:
    manager = sessions_of(request)
    if manager.current(request) is not None:
        return RedirectResponse(_safe_next(next), status_code=303)
    nonce = secrets.token_urlsafe(24)
    t = translator(manager.language_for(request))
    messages = {"failed": t("login.failed"), "throttled": t("login.throttled"), "expired": t("login.expired")}
    response = _render(request, "login.html", None, next=_safe_next(next), login_csrf=nonce,
                       error=messages.get(error, ""))
    response.set_cookie(LOGIN_COOKIE, manager.sign(nonce), **manager.cookie_args(1800))  # type: ignore[arg-type]
    return response


@router.post("/login")
def login(request: Request, username: Annotated[str, Form(max_length=64)] = "",
          password: Annotated[str, Form(max_length=1024)] = "",
          csrf_token: Annotated[str, Form(max_length=128)] = "",
          next: Annotated[str, Form(max_length=2000)] = "/") -> Response:
    manager = sessions_of(request)
    target = _safe_next(next)
    raw = request.cookies.get(LOGIN_COOKIE, "")
    nonce = manager.unsign(raw) if raw else None
    if nonce is None or not csrf_token or not hmac.compare_digest(nonce, csrf_token):
        return RedirectResponse(f"/login?error=expired&next={quote(target, safe='')}", status_code=303)
    remote = request.client.host if request.client else ""
    result = manager.authenticate(username.strip(), password, remote)
    if result is None or isinstance(result, str):
        code = "throttled" if result == "throttled" else "failed"
        return RedirectResponse(f"/login?error={code}&next={quote(target, safe='')}", status_code=303)
    cookie = manager.open(result, remote)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(SESSION_COOKIE, cookie, **manager.cookie_args(int(manager.lifetime.total_seconds())))  # type: ignore[arg-type]
    response.delete_cookie(LOGIN_COOKIE, path="/")
    return response


@router.post("/logout")
def logout(request: Request, user: AnyPage, csrf_token: Annotated[str, Form(max_length=128)] = "") -> Response:
    check_csrf(request, user, csrf_token)
    sessions_of(request).close(user)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.post("/language")
def set_language(request: Request, user: AnyPage, language: Annotated[str, Form(max_length=8)],
                 csrf_token: Annotated[str, Form(max_length=128)] = "",
                 next: Annotated[str, Form(max_length=2000)] = "/") -> Response:
    check_csrf(request, user, csrf_token)
    if language not in LANGUAGES:
        raise ApiError(422, "invalid_request", f"language must be one of {sorted(LANGUAGES)}")
    with _db(request).session() as s:
        row = s.get(User, user.id)
        if row is not None:
            row.language = language
        audit.record(s, user.name, "user.language", user.name, remote=user.remote, language=language)
    manager = sessions_of(request)
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(LANG_COOKIE, language, **manager.cookie_args(365 * 86400))  # type: ignore[arg-type]
    return response


# --- worklist -------------------------------------------------------------------------------------

def _study_rows(s: Session) -> list[dict[str, Any]]:
    studies = s.scalars(select(Study).order_by(Study.last_received_at.desc()).limit(2000)).all()
    analyses = {
        a.study_instance_uid: a for a in s.scalars(
            select(Analysis).options(selectinload(Analysis.findings)).where(Analysis.current.is_(True)))
    }
    rows = []
    for st in studies:
        a = analyses.get(st.study_instance_uid)
        findings = list(a.findings) if a else []
        ai = [f for f in findings if f.source == decisions.SOURCE_AI]
        live = [f for f in findings if f.decision != Decision.REJECT.value]
        suggested = decisions.suggested_category(findings) if a else ""
        category = st.lung_rads or suggested
        largest = max((f.diameter_mm for f in live), default=None)
        confidence = max((f.confidence for f in ai), default=None)
        rows.append({
            "uid": st.study_instance_uid, "patient_name": _pn(st.patient_name), "patient_id": st.patient_id,
            "accession": st.accession_number, "study_date": st.study_date,
            "study_date_fmt": _fmt_da(st.study_date), "description": st.study_description,
            "modalities": st.modalities, "received": _fmt_time(st.last_received_at),
            "state": decisions.review_state(st, findings), "findings": len(ai), "largest": largest,
            "confidence": confidence, "category": category, "category_signed": bool(st.lung_rads),
            "model": f"{a.model_id} {a.model_version}" if a else "", "model_key": f"{a.model_id}:{a.model_version}"
            if a else "", "claimed_by": st.claimed_by, "claimed_at": _fmt_time(st.claimed_at),
            "rank": (lungrads.rank(category), largest or 0.0, confidence or 0.0),
        })
    return rows


@router.get("/", response_class=HTMLResponse)
def worklist(request: Request, user: Annotated[WebUser, Depends(page_user(RAD, ADMIN, RESEARCHER))],
             state: str = "todo", date_from: str = "", date_to: str = "", model: str = "",
             modality: str = "") -> Response:
    if user.role == RESEARCHER:
        return RedirectResponse("/monitoring", status_code=303)
    with _db(request).session() as s:
        rows = _study_rows(s)
    models = sorted({(r["model_key"], r["model"]) for r in rows if r["model_key"]})
    modalities = sorted({m for r in rows for m in r["modalities"].split("\\") if m})
    shown = rows
    if state == "todo":
        shown = [r for r in shown if r["state"] in ("new", "in_review")]
    elif state != "all":
        shown = [r for r in shown if r["state"] == state]
    d_from, d_to = date_from.replace("-", ""), date_to.replace("-", "")
    if d_from:
        shown = [r for r in shown if r["study_date"] and r["study_date"] >= d_from]
    if d_to:
        shown = [r for r in shown if r["study_date"] and r["study_date"] <= d_to]
    if model:
        shown = [r for r in shown if r["model_key"] == model]
    if modality:
        shown = [r for r in shown if modality in r["modalities"].split("\\")]
    shown.sort(key=lambda r: r["rank"], reverse=True)
    states = ["todo", "all", *decisions.REVIEW_STATES, "receiving", "queued", "analyzing", "failed", "skipped"]
    return _render(request, "worklist.html", user, rows=shown, states=states,
                   filters={"state": state, "date_from": date_from, "date_to": date_to, "model": model,
                            "modality": modality},
                   models=models, modalities=modalities)


# --- viewer ---------------------------------------------------------------------------------------

def _series(request: Request, s: Session, analysis_id: int, series_uid: str) -> SeriesGeometry:
    """The analysed series' geometry, cached per analysis (a re-analysis has a new id)."""
    root: Path | None = request.app.state.spool_root
    if root is None:
        raise ApiError(503, "no_spool", "the web app was started without a spool folder")
    cache: SeriesCache = request.app.state.series_cache
    found = cache.for_analysis(analysis_id)
    if found is not None:
        return found
    paths = s.scalars(select(Instance.path).where(
        Instance.series_instance_uid == series_uid, Instance.current.is_(True))).all()
    if not paths:
        raise ApiError(404, "series_not_found", "the analysed series has no stored instances")
    return cache.geometry(series_uid, [root / p for p in paths], analysis_id=analysis_id)


def _finding_json(f: Finding, geometry: SeriesGeometry | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": f.id, "tracking_uid": f.tracking_uid, "source": f.source, "diameter_mm": round(f.diameter_mm, 2),
        "center_mm": [f.center_x_mm, f.center_y_mm, f.center_z_mm], "confidence": f.confidence,
        "nodule_type": f.nodule_type, "decision": f.decision, "decided_by": f.decided_by, "reason": f.reason,
        "edited": f.edited_at is not None, "edited_by": f.edited_by,
        "lung_rads": lungrads.category_for(f.diameter_mm, f.nodule_type),
    }
    if geometry is not None:
        col, row, k = geometry.to_pixel(out["center_mm"])
        normal = float(geometry.normal @ out["center_mm"])
        out.update({"column": col, "row": row, "slice": k, "normal_mm": normal})
    return out


def _viewer_state(request: Request, s: Session, study: Study, user: WebUser) -> dict[str, Any]:
    analysis = decisions.current_analysis(s, study.study_instance_uid)
    findings = list(analysis.findings) if analysis else []
    geometry = _series(request, s, analysis.id, analysis.series_instance_uid) if analysis else None
    editable = (user.role == RAD and study.state == StudyState.READY.value
                and study.claimed_by in ("", user.name))
    return {
        "study": {
            "uid": study.study_instance_uid, "state": decisions.review_state(study, findings),
            "claimed_by": study.claimed_by, "claimed_at": _fmt_time(study.claimed_at),
            "signed_by": study.signed_by, "signed_at": _fmt_time(study.signed_at),
            "lung_rads": study.lung_rads, "review_note": study.review_note,
            "suggested": decisions.suggested_category(findings) if analysis else "",
        },
        "editable": editable, "role": user.role.value, "me": user.name,
        "series": geometry.to_json() if geometry else None,
        "findings": [_finding_json(f, geometry) for f in findings],
        "categories": list(lungrads.CATEGORIES), "reasons": list(decisions.REJECT_REASONS),
        "types": ["", *(t.value for t in NoduleType)],
    }


@router.get("/studies/{study_uid}", response_class=HTMLResponse)
def viewer(request: Request, study_uid: str, user: ReaderPage) -> Response:
    with _db(request).session() as s:
        study = s.get(Study, study_uid)
        if study is None:
            t = translator(user.language)
            return _render(request, "error.html", user, status_code=404, title=t("err.notfound.title"),
                           message=t("err.notfound"))
        if user.role == RAD and study.state == StudyState.READY.value:
            decisions.claim(s, study, _actor(user))  # claim on open; read only if someone else holds it
        audit.record(s, user.name, "study.viewed", study_uid, remote=user.remote)
        analysis = decisions.current_analysis(s, study_uid)
        header = {
            "patient_name": _pn(study.patient_name), "patient_id": study.patient_id,
            "accession": study.accession_number, "study_date": _fmt_da(study.study_date),
            "description": study.study_description,
            "model": f"{analysis.model_id} {analysis.model_version}" if analysis else "",
        }
        state = _viewer_state(request, s, study, user)
    return _render(request, "viewer.html", user, header=header, state=state, study_uid=study_uid,
                   js_messages=script_messages(user.language), page_class="dark")


@router.get("/studies/{study_uid}/state")
def viewer_state(request: Request, study_uid: str, user: ReaderJson) -> JSONResponse:
    with _db(request).session() as s:
        study = decisions.get_study(s, study_uid)
        return JSONResponse(_viewer_state(request, s, study, user))


@router.get("/studies/{study_uid}/slices/{index}")
def slice_pixels(request: Request, study_uid: str, index: int, user: ReaderJson) -> Response:
    """One slice of the analysed series: little-endian int16 HU, ``rows x columns``, row-major."""
    with _db(request).session() as s:
        current = s.execute(select(Analysis.id, Analysis.series_instance_uid).where(
            Analysis.study_instance_uid == study_uid, Analysis.current.is_(True))).first()
        if current is None:
            raise ApiError(404, "no_analysis", "the study has no analysed series")
        geometry = _series(request, s, current[0], current[1])
    if not 0 <= index < len(geometry.slices):
        raise ApiError(404, "slice_not_found", f"slice {index} is outside 0..{len(geometry.slices) - 1}")
    cache: SeriesCache = request.app.state.series_cache
    data = cache.slice_bytes(geometry.slices[index].path)
    return Response(data, media_type="application/octet-stream",
                    headers={"Cache-Control": "private, max-age=3600", "X-Rows": str(geometry.rows),
                             "X-Columns": str(geometry.columns)})


class PixelPoint(BaseModel):
    slice: int = Field(ge=0)
    column: float
    row: float


class EditIn(BaseModel):
    center: PixelPoint | None = None
    diameter_mm: float | None = None
    nodule_type: str | None = None


class AddIn(BaseModel):
    center: PixelPoint
    diameter_mm: float
    nodule_type: str = ""


class ReasonIn(BaseModel):
    reason: str = Field(default="", max_length=1000)


class SignIn(BaseModel):
    lung_rads: str | None = None


def _point_mm(request: Request, s: Session, study_uid: str, point: PixelPoint) -> tuple[float, float, float]:
    analysis = decisions.current_analysis(s, study_uid)
    if analysis is None:
        raise ApiError(409, "no_analysis", "the study has no analysed series")
    geometry = _series(request, s, analysis.id, analysis.series_instance_uid)
    try:
        return geometry.to_patient(point.slice, point.column, point.row)
    except ValueError as exc:
        raise ApiError(422, "invalid_request", str(exc)) from exc


def _state_response(request: Request, s: Session, study_uid: str, user: WebUser) -> JSONResponse:
    s.flush()
    study = decisions.get_study(s, study_uid)
    s.expire_all()
    return JSONResponse(_viewer_state(request, s, study, user))


@router.post("/studies/{study_uid}/claim")
def claim(request: Request, study_uid: str, user: RadWrite) -> JSONResponse:
    with _db(request).session() as s:
        study = decisions.get_study(s, study_uid)
        if not decisions.claim(s, study, _actor(user)):
            raise ApiError(409, "claimed_by_other", f"the study is being reviewed by {study.claimed_by or '-'}")
        return _state_response(request, s, study_uid, user)


@router.post("/studies/{study_uid}/release")
def release(request: Request, study_uid: str, user: RadWrite) -> JSONResponse:
    with _db(request).session() as s:
        decisions.release(s, decisions.get_study(s, study_uid), _actor(user))
        return _state_response(request, s, study_uid, user)


@router.post("/studies/{study_uid}/claim/break")
def break_claim(request: Request, study_uid: str, user: AdminWrite) -> JSONResponse:
    with _db(request).session() as s:
        decisions.release(s, decisions.get_study(s, study_uid), _actor(user), force=True)
        return _state_response(request, s, study_uid, user)


@router.post("/studies/{study_uid}/findings/{finding_id}/accept")
def accept(request: Request, study_uid: str, finding_id: int, user: RadWrite) -> JSONResponse:
    with _db(request).session() as s:
        decisions.decide(s, decisions.get_study(s, study_uid), finding_id, Decision.ACCEPT, _actor(user),
                         auto_claim=True)
        return _state_response(request, s, study_uid, user)


@router.post("/studies/{study_uid}/findings/{finding_id}/reject")
def reject(request: Request, study_uid: str, finding_id: int, body: ReasonIn, user: RadWrite) -> JSONResponse:
    with _db(request).session() as s:
        decisions.decide(s, decisions.get_study(s, study_uid), finding_id, Decision.REJECT, _actor(user),
                         reason=body.reason, auto_claim=True)
        return _state_response(request, s, study_uid, user)


@router.post("/studies/{study_uid}/findings/{finding_id}/edit")
def edit(request: Request, study_uid: str, finding_id: int, body: EditIn, user: RadWrite) -> JSONResponse:
    with _db(request).session() as s:
        center = _point_mm(request, s, study_uid, body.center) if body.center else None
        decisions.edit(s, decisions.get_study(s, study_uid), finding_id, _actor(user), center_mm=center,
                       diameter_mm=body.diameter_mm, nodule_type=body.nodule_type, auto_claim=True)
        return _state_response(request, s, study_uid, user)


@router.post("/studies/{study_uid}/findings/{finding_id}/remove")
def remove(request: Request, study_uid: str, finding_id: int, user: RadWrite) -> JSONResponse:
    with _db(request).session() as s:
        decisions.remove_added(s, decisions.get_study(s, study_uid), finding_id, _actor(user), auto_claim=True)
        return _state_response(request, s, study_uid, user)


@router.post("/studies/{study_uid}/findings")
def add_finding(request: Request, study_uid: str, body: AddIn, user: RadWrite) -> JSONResponse:
    with _db(request).session() as s:
        center = _point_mm(request, s, study_uid, body.center)
        decisions.add(s, decisions.get_study(s, study_uid), _actor(user), center_mm=center,
                      diameter_mm=body.diameter_mm, nodule_type=body.nodule_type, auto_claim=True)
        return _state_response(request, s, study_uid, user)


@router.post("/studies/{study_uid}/sign")
def sign(request: Request, study_uid: str, body: SignIn, user: RadWrite) -> JSONResponse:
    with _db(request).session() as s:
        decisions.sign(s, decisions.get_study(s, study_uid), _actor(user), lung_rads=body.lung_rads)
        response = _state_response(request, s, study_uid, user)
    _wake(request)
    return response


@router.post("/studies/{study_uid}/reject")
def reject_study(request: Request, study_uid: str, body: ReasonIn, user: RadWrite) -> JSONResponse:
    with _db(request).session() as s:
        decisions.reject_study(s, decisions.get_study(s, study_uid), _actor(user), reason=body.reason)
        response = _state_response(request, s, study_uid, user)
    _wake(request)
    return response


def _wake(request: Request) -> None:
    wake = getattr(request.app.state, "wake_workers", None)
    if wake is not None:
        wake()


# --- monitoring -----------------------------------------------------------------------------------

def monitoring_rows(s: Session) -> list[dict[str, Any]]:
    """Per model version: studies, AI findings and what radiologists did with them."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    query = select(Analysis).options(selectinload(Analysis.findings)).where(Analysis.current.is_(True))
    for a in s.scalars(query):
        r = rows.setdefault((a.model_id, a.model_version), {
            "model": a.model_id, "version": a.model_version, "studies": 0, "ai": 0, "accepted": 0, "edited": 0,
            "rejected": 0, "undecided": 0, "added": 0, "reasons": {}})
        r["studies"] += 1
        for f in a.findings:
            if f.source == decisions.SOURCE_RADIOLOGIST:
                r["added"] += 1
                continue
            r["ai"] += 1
            if f.decision == Decision.REJECT.value:
                r["rejected"] += 1
                key = f.reason.split(":")[0].strip() or "unspecified"
                r["reasons"][key] = r["reasons"].get(key, 0) + 1
            elif f.decision == Decision.ACCEPT.value:
                r["edited" if f.edited_at is not None else "accepted"] += 1
            else:
                r["undecided"] += 1
    out = []
    for r in sorted(rows.values(), key=lambda r: (r["model"], r["version"])):
        decided = r["accepted"] + r["edited"] + r["rejected"]
        r["kept"] = round(100.0 * (r["accepted"] + r["edited"]) / decided, 1) if decided else None
        out.append(r)
    return out


@router.get("/monitoring", response_class=HTMLResponse)
def monitoring(request: Request, user: MonitorPage) -> Response:
    with _db(request).session() as s:
        rows = monitoring_rows(s)
    return _render(request, "monitoring.html", user, rows=rows)


@router.get("/monitoring.json")
def monitoring_json(request: Request, user: Annotated[WebUser, Depends(json_user(ADMIN, RESEARCHER))]
                    ) -> JSONResponse:
    with _db(request).session() as s:
        return JSONResponse(monitoring_rows(s))


# --- audit ----------------------------------------------------------------------------------------

def _audit_query(actor: str, action: str, target: str, since: str, until: str) -> Any:
    query = select(AuditEvent)
    if actor:
        query = query.where(AuditEvent.actor == actor)
    if action:
        query = query.where(AuditEvent.action.startswith(action))
    if target:
        query = query.where(AuditEvent.target == target)
    for value, after in ((since, True), (until, False)):
        if value:
            try:
                day = datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=UTC)
            except ValueError as exc:
                raise ApiError(422, "invalid_request", "dates are YYYY-MM-DD") from exc
            query = query.where(AuditEvent.at >= day) if after else query.where(AuditEvent.at < day + timedelta(days=1))
    return query


def _event(e: AuditEvent) -> dict[str, Any]:
    return {"id": e.id, "at": e.at.astimezone(UTC).isoformat(), "actor": e.actor, "action": e.action,
            "target": e.target, "remote": e.remote, "detail": e.detail}


@router.get("/admin/audit", response_class=HTMLResponse)
def audit_page(request: Request, user: AdminPage, actor: str = "", action: str = "", target: str = "",
               since: str = "", until: str = "", before: int | None = None,
               limit: Annotated[int, Query(ge=1, le=1000)] = 200) -> Response:
    filters = {"actor": actor, "action": action, "target": target, "since": since, "until": until}
    with _db(request).session() as s:
        query = _audit_query(actor, action, target, since, until)
        if before is not None:
            query = query.where(AuditEvent.id < before)
        events = [_event(e) for e in s.scalars(query.order_by(AuditEvent.id.desc()).limit(limit))]
        actors = sorted(a for a in s.scalars(select(AuditEvent.actor).distinct()) if a)
        actions = sorted(s.scalars(select(AuditEvent.action).distinct()))
        total = s.scalar(select(func.count()).select_from(AuditEvent))
    query_string = urlencode({k: v for k, v in filters.items() if v})
    older = (f"?{query_string}&before={events[-1]['id']}" if query_string else f"?before={events[-1]['id']}") \
        if len(events) == limit else ""
    for e in events:
        e["at_fmt"] = e["at"][:19].replace("T", " ")
        e["detail_fmt"] = json.dumps(e["detail"], ensure_ascii=False, sort_keys=True) if e["detail"] else ""
    return _render(request, "audit.html", user, events=events, filters=filters, actors=actors, actions=actions,
                   total=total, export_query=query_string, older=older)


@router.get("/admin/audit.{fmt}")
def audit_export(request: Request, fmt: str, user: Annotated[WebUser, Depends(json_user(ADMIN))], actor: str = "",
                 action: str = "", target: str = "", since: str = "", until: str = "") -> Response:
    if fmt not in ("csv", "json"):
        raise ApiError(404, "not_found", "export as .csv or .json")
    db = _db(request)
    with db.session() as s:
        audit.record(s, user.name, "audit.exported", fmt, remote=user.remote,
                     filters={k: v for k, v in {"actor": actor, "action": action, "target": target, "since": since,
                                                "until": until}.items() if v})
    query = _audit_query(actor, action, target, since, until).order_by(AuditEvent.id)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")

    def rows() -> Iterator[dict[str, Any]]:
        with db.session() as s:
            for e in s.scalars(query.execution_options(yield_per=500)):
                yield _event(e)

    if fmt == "json":
        def json_lines() -> Iterator[str]:
            yield "["
            for i, e in enumerate(rows()):
                yield ("," if i else "") + "\n" + json.dumps(e, ensure_ascii=False)
            yield "\n]\n"

        return StreamingResponse(json_lines(), media_type="application/json", headers={
            "Content-Disposition": f'attachment; filename="tamsoat-audit-{stamp}.json"'})

    def csv_lines() -> Iterator[str]:
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["id", "at", "actor", "action", "target", "remote", "detail"])
        for e in rows():
            writer.writerow([e["id"], e["at"], *(_cell(e[k]) for k in ("actor", "action", "target", "remote")),
                             _cell(json.dumps(e["detail"], ensure_ascii=False, sort_keys=True))])
            yield buf.getvalue()
            buf.seek(0)
            buf.truncate()
        yield buf.getvalue()

    return StreamingResponse(csv_lines(), media_type="text/csv; charset=utf-8", headers={
        "Content-Disposition": f'attachment; filename="tamsoat-audit-{stamp}.csv"'})


def _cell(value: str) -> str:
    """A CSV cell that a spreadsheet will not run as a formula (a typed user name could start with =)."""
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


__all__ = ["CSRF_FIELD", "install", "monitoring_rows", "router"]
