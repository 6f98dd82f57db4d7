"""Queries of the operations API. Unscoped on purpose: operators act on every tenant's
turns, and only the ops routes (superadmins or the ops token) reach this."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from chatplane.chat.models import TERMINAL_STATES, Turn

ACTIVE_STATES = ("queued", "running")


class OpsRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def active_turn_counts(self) -> dict[str, int]:
        """How many turns are queued and running, over every tenant."""
        rows = await self.session.execute(
            select(Turn.status, func.count())
            .where(Turn.status.in_(ACTIVE_STATES))
            .group_by(Turn.status)
        )
        counts = dict.fromkeys(ACTIVE_STATES, 0)
        counts.update({status: int(count) for status, count in rows.all()})
        return counts

    async def turn(self, turn_id: str) -> Turn | None:
        return await self.session.get(Turn, turn_id)

    async def cancel_queued(self, turn_id: str, when: datetime) -> bool:
        """End a turn that is still queued as cancelled; False when it moved on."""
        result = await self.session.execute(
            update(Turn)
            .where(Turn.id == turn_id, Turn.status == "queued")
            .values(status="cancelled", finished_at=when)
        )
        return bool(getattr(result, "rowcount", 0))

    async def requeue(self, turn_id: str) -> bool:
        """Put a turn that has not ended back to queued; False when it has ended."""
        result = await self.session.execute(
            update(Turn)
            .where(Turn.id == turn_id, Turn.status.not_in(TERMINAL_STATES))
            .values(status="queued")
        )
        return bool(getattr(result, "rowcount", 0))
