"""The rules of the operations API (no HTTP here): the deployment at a glance, the drain of
this process, dead letters, and cancelling or requeueing any tenant's turn."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import structlog

from chatplane.auth.audit import AuditLog
from chatplane.broker.protocol import Broker, DeadLetter, QueueStats
from chatplane.chat.models import TERMINAL_STATES, Turn
from chatplane.chat.service import TURN_JOB
from chatplane.db.base import utcnow
from chatplane.db.engine import Database
from chatplane.errors import ChatplaneError, Conflict, NotFound, ServiceUnavailable
from chatplane.ops.drain import Drain
from chatplane.ops.presence import Presence, SeenProcess
from chatplane.ops.repository import OpsRepository
from chatplane.settings import Settings

log = structlog.get_logger("chatplane.ops")

T = TypeVar("T")
CHECK_TIMEOUT_S = 3.0
DRAIN_REASON = "ops API"


@dataclass(frozen=True, slots=True)
class OpsActor:
    """Who acts: a superadmin, or whoever holds the ops token."""

    via: Literal["superadmin", "ops_token"]
    user_id: str | None = None
    email: str | None = None
    ip: str | None = None


@dataclass(frozen=True, slots=True)
class Check:
    ok: bool
    error: str | None = None


@dataclass(frozen=True, slots=True)
class PoolStats:
    size: int
    checked_out: int
    overflow: int
    max_overflow: int


@dataclass(frozen=True, slots=True)
class Status:
    presence: Presence
    drain: Drain
    processes: list[SeenProcess]
    presence_error: str | None
    queue: QueueStats | None
    queue_error: str | None
    turns: dict[str, int] | None
    turns_error: str | None
    pool: PoolStats | None
    database: Check
    redis: Check | None  # None: the embedded shape has no Redis


@dataclass(frozen=True, slots=True)
class TurnAction:
    turn_id: str
    tenant_id: str
    status: str
    action: Literal["cancel_requested", "cancelled", "requeued"]
    job_id: str | None = None


async def _timed(call: Callable[[], Awaitable[T]]) -> tuple[T | None, str | None]:
    """The result of `call`, or the reason it failed, within `CHECK_TIMEOUT_S`."""
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            return await call(), None
    except ChatplaneError as exc:
        return None, exc.detail
    except TimeoutError:
        return None, f"no answer within {CHECK_TIMEOUT_S:g} s"


class OpsService:
    def __init__(
        self,
        *,
        settings: Settings,
        db: Database,
        broker: Broker,
        presence: Presence,
        audit: AuditLog,
    ) -> None:
        self.settings = settings
        self.db = db
        self.broker = broker
        self.presence = presence
        self.audit = audit

    # The deployment at a glance ------------------------------------------------------------

    async def status(self, drain: Drain) -> Status:
        self.presence.watch_drain(drain)

        async def ping_database() -> bool:
            await self.db.ping()
            return True

        async def ping_redis() -> bool:
            await self.broker.ping()
            return True

        processes, queue, turns, database, redis = await asyncio.gather(
            _timed(self.presence.processes),
            _timed(self.broker.stats),
            _timed(self._turn_counts),
            _timed(ping_database),
            _timed(ping_redis) if self.settings.redis_url else _nothing(),
        )
        return Status(
            presence=self.presence,
            drain=drain,
            processes=processes[0] or [],
            presence_error=processes[1],
            queue=queue[0],
            queue_error=queue[1],
            turns=turns[0],
            turns_error=turns[1],
            pool=self._pool(),
            database=Check(database[1] is None, database[1]),
            redis=Check(redis[1] is None, redis[1]) if self.settings.redis_url else None,
        )

    async def _turn_counts(self) -> dict[str, int]:
        async with self.db.session() as session:
            return await OpsRepository(session).active_turn_counts()

    def _pool(self) -> PoolStats | None:
        pool: Any = self.db.engine.sync_engine.pool
        if not callable(getattr(pool, "size", None)):
            return None  # NullPool, StaticPool: nothing pooled
        return PoolStats(
            size=int(pool.size()),
            checked_out=int(pool.checkedout()),
            overflow=max(0, int(pool.overflow())),
            max_overflow=max(0, int(getattr(pool, "_max_overflow", 0))),
        )

    # Drain of this process -----------------------------------------------------------------

    async def drain(self, drain: Drain, actor: OpsActor) -> None:
        drain.start(DRAIN_REASON)
        await self._announce(drain)
        await self._record("ops.drain", actor)

    async def undrain(self, drain: Drain, actor: OpsActor) -> None:
        drain.stop()
        await self._announce(drain)
        await self._record("ops.undrain", actor)

    async def _announce(self, drain: Drain) -> None:
        """Tell the other processes at once, not at the next heartbeat."""
        self.presence.watch_drain(drain)
        try:
            await self.presence.beat()
        except ServiceUnavailable as exc:
            log.warning("presence_unavailable", error=exc.detail)

    # Dead letters and turns ----------------------------------------------------------------

    async def dead_letters(self, limit: int) -> list[DeadLetter]:
        return await self.broker.dead_letters(limit)

    async def cancel_turn(self, turn_id: str, actor: OpsActor) -> TurnAction:
        """Ask whichever process runs the turn to stop. A queued turn no job can reach any
        more (the queue is empty) is ended here, as the worker would have."""
        turn = await self._active_turn(turn_id)
        await self.broker.request_cancel(turn_id)
        action: Literal["cancel_requested", "cancelled"] = "cancel_requested"
        status = turn.status
        if turn.status == "queued" and (await self.broker.stats()).depth == 0:
            async with self.db.session() as session:
                ended = await OpsRepository(session).cancel_queued(turn_id, utcnow())
                await session.commit()
            if ended:
                action, status = "cancelled", "cancelled"
                await self.broker.publish(turn_id, "turn.cancelled", {"message_id": None})
                await self.broker.expire(turn_id, self.settings.turn_events_ttl_s)
        await self._record(
            "ops.turn_cancelled", actor, tenant_id=turn.tenant_id, subject=turn_id, outcome=action
        )
        return TurnAction(turn_id, turn.tenant_id, status, action)

    async def requeue_turn(self, turn_id: str, actor: OpsActor) -> TurnAction:
        """A stuck turn (queued or running) gets a fresh job. Its old job, if it still
        runs somewhere, would run alongside: requeue only turns whose run is gone."""
        turn = await self._active_turn(turn_id)
        async with self.db.session() as session:
            requeued = await OpsRepository(session).requeue(turn_id)
            await session.commit()
        if not requeued:
            raise _ended(turn_id, "ended")
        job_id = await self.broker.enqueue(TURN_JOB, {"turn_id": turn_id})
        await self._record(
            "ops.turn_requeued",
            actor,
            tenant_id=turn.tenant_id,
            subject=turn_id,
            job_id=job_id,
            was=turn.status,
        )
        return TurnAction(turn_id, turn.tenant_id, "queued", "requeued", job_id)

    async def _active_turn(self, turn_id: str) -> Turn:
        async with self.db.session() as session:
            turn = await OpsRepository(session).turn(turn_id)
        if turn is None:
            raise NotFound("No such turn", code="turn_not_found")
        if turn.status in TERMINAL_STATES:
            raise _ended(turn_id, turn.status)
        return turn

    async def _record(self, action: str, actor: OpsActor, **detail: Any) -> None:
        """The audit row. Its log line is written first, so an operator acting while the
        database is down (drain) is still on record and the action still stands."""
        try:
            await self.audit.record(
                action, actor_id=actor.user_id, ip=actor.ip, via=actor.via, **detail
            )
        except ServiceUnavailable as exc:
            log.error("audit_row_not_stored", action=action, error=exc.detail)


def _ended(turn_id: str, status: str) -> Conflict:
    return Conflict(f"The turn {turn_id} has already ended ({status})", code="turn_ended")


async def _nothing() -> tuple[bool | None, str | None]:
    return None, None
