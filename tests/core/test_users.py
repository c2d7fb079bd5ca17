from __future__ import annotations

import pytest

from tamsoat.core.db import Database
from tamsoat.core.domain import Role
from tamsoat.core.tables import AuditEvent
from tamsoat.core.users import UserError, add_user, check_password, create_token, hash_password, user_for_token


def test_tokens_resolve_to_their_user(db: Database) -> None:
    with db.session() as s:
        add_user(s, "an", Role.RADIOLOGIST)
    with db.session() as s:
        secret = create_token(s, "an")
    with db.session() as s:
        user = user_for_token(s, secret)
        assert user is not None and user.name == "an" and user.role == "radiologist"
        assert user_for_token(s, secret + "x") is None
        actions = [e.action for e in s.query(AuditEvent).order_by(AuditEvent.id)]
        assert actions == ["user.added", "token.created"]


def test_user_errors_are_sentences(db: Database) -> None:
    with db.session() as s:
        add_user(s, "an", Role.ADMIN)
    with pytest.raises(UserError, match="already exists"), db.session() as s:
        add_user(s, "an", Role.ADMIN)
    with pytest.raises(UserError, match="not allowed"), db.session() as s:
        add_user(s, "bad name!", Role.ADMIN)
    with pytest.raises(UserError, match="no user named"), db.session() as s:
        create_token(s, "ghost")


def test_password_hashing() -> None:
    stored = hash_password("correct horse")
    assert stored.startswith("scrypt$") and "correct" not in stored
    assert check_password("correct horse", stored)
    assert not check_password("wrong", stored)
    assert not check_password("x", "garbage")
