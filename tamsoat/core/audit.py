"""The audit trail: an append-only store of who did what to which object, from where.

Targets are UIDs or ids; details never carry patient names, IDs or birth dates.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session

from tamsoat.core.tables import AuditEvent


def record(
    session: Session, actor: str, action: str, target: str = "", *, remote: str = "", **detail: Any
) -> None:
    """Append one event in the caller's transaction (so it commits or rolls back with the change)."""
    session.add(
        AuditEvent(at=datetime.now(UTC), actor=actor, action=action, target=target, remote=remote,
                   detail=detail)
    )
