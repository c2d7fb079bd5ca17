"""Browser sessions: password login, a signed HttpOnly SameSite=Strict cookie, CSRF tokens, roles.

* The cookie holds a random token and its HMAC-SHA256 under the server's secret key; the database
  keeps only the token's sha256 (``web_sessions``), with its CSRF token, expiry and the address it
  came from, so a logout or an admin's deactivation ends the session at once.
* Every state-changing request (POST) must carry the session's CSRF token, in the
  ``X-CSRF-Token`` header (fetch) or a ``csrf_token`` form field, and, when the browser sends an
  ``Origin``, come from this site. The login form is protected the same way with a pre-session
  cookie.
* Failed logins are throttled per user name and per address.
* API tokens (``Authorization: Bearer``) stay for integrations: see ``review.auth``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

from fastapi import Request
from sqlalchemy import select

from review.errors import ApiError
from tamsoat.core import audit
from tamsoat.core.db import Database
from tamsoat.core.domain import Role
from tamsoat.core.tables import User, WebSession
from tamsoat.core.users import check_password, hash_password

SESSION_COOKIE = "tamsoat_session"
LOGIN_COOKIE = "tamsoat_login"
LANG_COOKIE = "tamsoat_lang"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
LANGUAGES = ("en", "vi")
_DUMMY_HASH = hash_password(secrets.token_hex(8))  # equal work for unknown users


def load_or_create_secret(path: Path) -> bytes:
    """The key that signs cookies: read from ``path``, or made (0600) on first start."""
    if path.is_file():
        key = bytes.fromhex(path.read_text().strip())
        if len(key) < 32:
            raise ValueError(f"{path} holds a key shorter than 32 bytes")
        return key
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key.hex())
    return key


@dataclass(frozen=True)
class WebUser:
    """The person behind a browser request."""

    id: int
    name: str
    display_name: str
    role: Role
    language: str
    csrf_token: str
    session_id: str
    remote: str


class LoginRequired(Exception):
    """A page needs a logged-in user: answered with a redirect to the login page."""

    def __init__(self, next_url: str) -> None:
        super().__init__("login required")
        self.next_url = next_url


class PageForbidden(Exception):
    """A page the user's role may not see: answered with a 403 page."""

    def __init__(self, user: WebUser) -> None:
        super().__init__("forbidden")
        self.user = user


class Throttle:
    """At most ``limit`` failed logins per key within ``window_s``; thread-safe, in memory."""

    def __init__(self, limit: int = 5, window_s: float = 900.0) -> None:
        self.limit = limit
        self.window_s = window_s
        self._fails: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def blocked(self, *keys: str) -> bool:
        now = time.monotonic()
        with self._lock:
            for key in keys:
                recent = [t for t in self._fails.get(key, []) if now - t < self.window_s]
                self._fails[key] = recent
                if len(recent) >= self.limit:
                    return True
        return False

    def fail(self, *keys: str) -> None:
        with self._lock:
            for key in keys:
                self._fails.setdefault(key, []).append(time.monotonic())

    def clear(self, key: str) -> None:
        with self._lock:
            self._fails.pop(key, None)


class SessionManager:
    def __init__(self, db: Database, secret: bytes, *, hours: float = 12.0, secure: bool = False,
                 default_language: str = "en") -> None:
        self.db = db
        self._secret = secret
        self.lifetime = timedelta(hours=hours)
        self.secure = secure
        self.default_language = default_language
        self.throttle = Throttle()

    # --- signing -------------------------------------------------------------------------------
    def sign(self, value: str) -> str:
        mac = hmac.new(self._secret, value.encode(), hashlib.sha256).digest()
        return f"{value}.{base64.urlsafe_b64encode(mac).decode().rstrip('=')}"

    def unsign(self, signed: str) -> str | None:
        value, _, _mac = signed.rpartition(".")
        if not value or not hmac.compare_digest(self.sign(value), signed):
            return None
        return value

    def cookie_args(self, max_age: int | None) -> dict[str, object]:
        return {"httponly": True, "samesite": "strict", "secure": self.secure, "path": "/", "max_age": max_age}

    # --- login / logout ------------------------------------------------------------------------
    def authenticate(self, name: str, password: str, remote: str) -> User | str | None:
        """The user for a good name and password; None if wrong; "throttled" after too many failures."""
        keys = (f"user:{name.lower()}", f"addr:{remote}")
        if self.throttle.blocked(*keys):
            with self.db.session() as s:
                audit.record(s, name[:64], "login.throttled", remote=remote)
            return "throttled"
        with self.db.session() as s:
            user = s.scalar(select(User).where(User.name == name))
            ok = check_password(password, user.password_hash if user and user.password_hash else _DUMMY_HASH)
            if user is None or not user.active or not user.password_hash or not ok:
                self.throttle.fail(*keys)
                audit.record(s, name[:64], "login.failed", remote=remote)
                return None
            self.throttle.clear(keys[0])
            s.expunge(user)
            return user

    def open(self, user: User, remote: str) -> str:
        """Start a session for ``user``; returns the signed cookie value."""
        token = secrets.token_urlsafe(32)
        now = datetime.now(UTC)
        with self.db.session() as s:
            s.add(WebSession(id=_sha(token), user_id=user.id, csrf_token=secrets.token_urlsafe(32),
                             created_at=now, expires_at=now + self.lifetime, last_seen_at=now, remote=remote[:64]))
            audit.record(s, user.name, "login", remote=remote)
        return self.sign(token)

    def close(self, user: WebUser) -> None:
        with self.db.session() as s:
            row = s.get(WebSession, user.session_id)
            if row is not None:
                row.revoked = True
            audit.record(s, user.name, "logout", remote=user.remote)

    # --- per request ---------------------------------------------------------------------------
    def current(self, request: Request) -> WebUser | None:
        cached = getattr(request.state, "web_user", None)
        if cached is not None:
            return cached
        raw = request.cookies.get(SESSION_COOKIE)
        token = self.unsign(raw) if raw else None
        if token is None:
            return None
        now = datetime.now(UTC)
        with self.db.session() as s:
            row = s.get(WebSession, _sha(token))
            if row is None or row.revoked or row.expires_at <= now or not row.user.active:
                return None
            if (now - row.last_seen_at).total_seconds() > 60:
                row.last_seen_at = now
            u = row.user
            user = WebUser(u.id, u.name, display_name(u.display_name or u.name), Role(u.role),
                           u.language if u.language in LANGUAGES else self.default_language,
                           row.csrf_token, row.id, _remote(request))
        request.state.web_user = user
        return user

    def language_for(self, request: Request) -> str:
        user = self.current(request)
        if user is not None:
            return user.language
        lang = request.cookies.get(LANG_COOKIE, "")
        if lang in LANGUAGES:
            return lang
        accept = request.headers.get("accept-language", "").lower()
        return "vi" if accept.startswith("vi") else self.default_language


def display_name(pn: str) -> str:
    """A DICOM-style name (Family^Given) for display, family name first as in Vietnamese: "Nguyen Lan"."""
    return " ".join(part for part in pn.split("^") if part) or pn


def _sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _remote(request: Request) -> str:
    return request.client.host if request.client else ""


def sessions_of(request: Request) -> SessionManager:
    manager: SessionManager = request.app.state.sessions
    return manager


def check_csrf(request: Request, user: WebUser, form_token: str | None = None) -> None:
    """Refuse a state-changing request without the session's CSRF token or from another origin."""
    origin = request.headers.get("origin")
    if origin is not None and origin != "null":
        host = request.headers.get("host", "")
        if urlsplit(origin).netloc != host:
            raise ApiError(403, "csrf", "the request comes from another site")
    elif origin == "null":
        raise ApiError(403, "csrf", "the request comes from an opaque origin")
    sent = request.headers.get(CSRF_HEADER) or form_token or ""
    if not sent or not hmac.compare_digest(sent, user.csrf_token):
        raise ApiError(403, "csrf", "missing or wrong CSRF token; reload the page")


def page_user(*roles: Role) -> Callable[[Request], WebUser]:
    """Dependency for HTML pages: anonymous -> redirect to /login; wrong role -> 403 page."""

    def dependency(request: Request) -> WebUser:
        user = sessions_of(request).current(request)
        if user is None:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            raise LoginRequired(target)
        if user.role not in roles:
            raise PageForbidden(user)
        return user

    return dependency


def json_user(*roles: Role, csrf: bool = False) -> Callable[[Request], WebUser]:
    """Dependency for the pages' JSON and binary endpoints: 401 / 403 JSON errors; CSRF on writes."""

    def dependency(request: Request) -> WebUser:
        user = sessions_of(request).current(request)
        if user is None:
            raise ApiError(401, "unauthenticated", "log in first")
        if user.role not in roles:
            raise ApiError(403, "forbidden", f"the role {user.role.value!r} may not do this")
        if csrf:
            check_csrf(request, user)
        return user

    return dependency
