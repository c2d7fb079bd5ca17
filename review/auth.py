"""Authentication for API routes: a bearer token that belongs to an active user with a role."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fastapi import Request

from review.errors import ApiError
from tamsoat.core.db import Database
from tamsoat.core.domain import Role
from tamsoat.core.users import user_for_token


@dataclass(frozen=True)
class Principal:
    name: str
    role: Role
    remote: str


def require_roles(*roles: Role) -> Callable[[Request], Principal]:
    """A FastAPI dependency that admits a user holding one of ``roles`` and refuses everyone else."""

    def dependency(request: Request) -> Principal:
        header = request.headers.get("authorization", "")
        scheme, _, secret = header.partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise ApiError(401, "unauthenticated", "send an API token as 'Authorization: Bearer <token>'")
        db: Database = request.app.state.db
        with db.session() as s:
            user = user_for_token(s, secret.strip())
            if user is None:
                raise ApiError(401, "unauthenticated", "the API token is unknown or revoked")
            principal = Principal(user.name, Role(user.role), request.client.host if request.client else "")
        if principal.role not in roles:
            raise ApiError(403, "forbidden", f"the role {principal.role.value!r} may not do this")
        return principal

    return dependency
