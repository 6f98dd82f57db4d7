"""The audit log of security events: a row in the database and a structured log line."""

from __future__ import annotations

from typing import Any

import orjson
import structlog

from chatplane.auth.models import AuditEvent
from chatplane.db.base import new_id
from chatplane.db.engine import Database

log = structlog.get_logger("chatplane.audit")


class AuditLog:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def record(
        self,
        action: str,
        *,
        tenant_id: str | None = None,
        actor_id: str | None = None,
        subject: str | None = None,
        ip: str | None = None,
        **detail: Any,
    ) -> None:
        log.info(
            "audit",
            action=action,
            tenant_id=tenant_id,
            actor_id=actor_id,
            subject=subject,
            ip=ip,
            **detail,
        )
        async with self.db.session() as session:
            session.add(
                AuditEvent(
                    id=new_id(),
                    tenant_id=tenant_id,
                    actor_id=actor_id,
                    action=action,
                    subject=subject,
                    ip=ip,
                    detail=orjson.dumps(detail).decode(),
                )
            )
            await session.commit()
