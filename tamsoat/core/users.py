"""Local users and API tokens. Passwords are hashed with scrypt; tokens are stored as sha256."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from tamsoat.core import audit
from tamsoat.core.domain import Role
from tamsoat.core.tables import ApiToken, User

_SCRYPT = {"n": 2**14, "r": 8, "p": 1}
NAME_PATTERN = r"^[A-Za-z0-9_.@-]{1,64}$"


class UserError(ValueError):
    """A user or token operation that cannot be done; the message says why."""


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, **_SCRYPT)
    return f"scrypt${salt.hex()}${digest.hex()}"


def check_password(password: str, stored: str) -> bool:
    try:
        scheme, salt_hex, digest_hex = stored.split("$")
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    digest = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt_hex), **_SCRYPT)
    return hmac.compare_digest(digest.hex(), digest_hex)


def add_user(
    session: Session, name: str, role: Role, *, password: str | None = None, actor: str = "cli"
) -> User:
    if not re.fullmatch(NAME_PATTERN, name):
        raise UserError(f"user name {name!r} is not allowed: use 1-64 letters, digits or _ . @ -")
    if session.scalar(select(User).where(User.name == name)) is not None:
        raise UserError(f"user {name!r} already exists")
    user = User(name=name, role=role.value, password_hash=hash_password(password) if password else "",
                created_at=datetime.now(UTC))
    session.add(user)
    audit.record(session, actor, "user.added", name, role=role.value)
    return user


def create_token(session: Session, name: str, *, actor: str = "cli") -> str:
    """Make a new API token for user ``name``; returns the secret, which is shown once and never stored."""
    user = session.scalar(select(User).where(User.name == name))
    if user is None:
        raise UserError(f"no user named {name!r}; add one with `tamsoat users add {name} --role ROLE`")
    secret = "tms_" + secrets.token_urlsafe(32)
    session.add(ApiToken(user_id=user.id, token_sha256=_token_hash(secret), created_at=datetime.now(UTC)))
    audit.record(session, actor, "token.created", name)
    return secret


def user_for_token(session: Session, secret: str) -> User | None:
    token = session.scalar(
        select(ApiToken).where(ApiToken.token_sha256 == _token_hash(secret), ApiToken.revoked.is_(False))
    )
    if token is None or not token.user.active:
        return None
    return token.user


def _token_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()
