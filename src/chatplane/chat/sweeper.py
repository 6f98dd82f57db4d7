"""The turn sweeper: no turn stays `queued` or `running` forever without a job.

A message's turn is committed before its job is queued, so a process that dies in between
(or a broker that refuses the job while the turn cannot be taken back) leaves a turn with
no job; the in-process broker of the embedded shape loses every job when `serve` restarts.
The sweeper finds such turns (not ended, older than a grace period, no job for them in the
broker) and queues their job again, or fails them (`turn_lost`) once they were started
`turn_max_attempts` times or are older than the max age.

Why queuing a job again is safe: the runner starts a turn only while its row exists and
has not ended (`TurnRepository.start`), and stores an outcome exactly once (`finish` only
moves a turn that has not ended, and an assistant message's `turn_id` is unique), so a job
for a turn that ended meanwhile is a no-op and two runs of one turn store one answer and
settle its budget once. Two runs at the same time would still both stream deltas to the
turn's events, which is why the sweeper skips every turn the broker holds a job for
instead of relying on those guards alone.

One process sweeps at a time on Postgres (a transaction-scoped advisory lock); SQLite means
the embedded shape, one process.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from sqlalchemy import select, text, tuple_

from chatplane.broker.protocol import Broker
from chatplane.chat.models import Turn
from chatplane.chat.runner import TurnRunner
from chatplane.chat.service import TURN_JOB
from chatplane.db.base import utcnow
from chatplane.db.engine import Database
from chatplane.observability.metrics import turn_swept
from chatplane.settings import Settings

log = structlog.get_logger("chatplane.sweeper")

LOST_CODE = "turn_lost"
SWEEP_LOCK = 0x63705F7377  # pg_try_advisory_xact_lock key: "cp_sw"
# Turns read per query, and turns requeued or failed per sweep (the rest wait for the next).
PAGE = 1000
MAX_ACTIONS_PER_SWEEP = 1000
ACTIVE_STATES = ("queued", "running")


@dataclass(frozen=True, slots=True)
class SweepResult:
    requeued: int = 0
    failed: int = 0
    locked_out: bool = False  # another process was sweeping


class TurnSweeper:
    def __init__(
        self,
        db: Database,
        broker: Broker,
        runner: TurnRunner,
        settings: Settings,
        *,
        recover_before: datetime | None = None,
    ) -> None:
        """`recover_before`: the broker lost every job queued before this moment (the
        in-process broker of a restarted `serve`), so the first sweep takes every turn
        created before it without waiting for the grace period."""
        self.db = db
        self.broker = broker
        self.runner = runner
        self.grace = timedelta(seconds=settings.turn_sweep_grace_s)
        self.max_age = timedelta(seconds=settings.turn_sweep_max_age_s)
        self.max_attempts = settings.turn_max_attempts
        self._recover_before = recover_before

    async def sweep(self) -> SweepResult:
        now = utcnow()
        cutoff = now - self.grace
        if self._recover_before is not None:
            cutoff = max(cutoff, self._recover_before)
        async with self._lock() as held:
            if not held:
                return SweepResult(locked_out=True)
            # The broker first: a job acknowledged after this read has ended its turn
            # before, so the turn query below no longer returns it.
            held_jobs = await self.broker.job_subjects(TURN_JOB, "turn_id")
            requeued = failed = 0
            async for turn in self._stale(cutoff):
                if turn.id in held_jobs:
                    continue  # queued behind others, or running (a dead worker's is reclaimed)
                if requeued + failed >= MAX_ACTIONS_PER_SWEEP:
                    break
                if await self._settle(turn, now):
                    requeued += 1
                else:
                    failed += 1
        self._recover_before = None
        return SweepResult(requeued=requeued, failed=failed)

    async def _settle(self, turn: Turn, now: datetime) -> bool:
        """Queue the turn's job again (True) or fail it."""
        age_s = round((now - turn.created_at).total_seconds(), 1)
        fields = {"turn_id": turn.id, "status": turn.status, "attempts": turn.attempts}
        if turn.attempts >= self.max_attempts or now - turn.created_at > self.max_age:
            reason = (
                f"The turn was left {turn.status} with no job after {turn.attempts} run(s) "
                f"over {age_s:g} s"
            )
            if await self.runner.fail_abandoned(turn.id, reason, code=LOST_CODE):
                turn_swept("failed")
                log.warning("turn_swept", action="failed", age_s=age_s, **fields)
            return False
        # The lost job's budget keys are unknown here: its reservation lapses on its TTL.
        await self.broker.enqueue(TURN_JOB, {"turn_id": turn.id, "swept": True})
        turn_swept("requeued")
        log.warning("turn_swept", action="requeued", age_s=age_s, **fields)
        return True

    async def _stale(self, cutoff: datetime) -> AsyncIterator[Turn]:
        """Turns not ended and created before `cutoff`, oldest first, a page per query."""
        after: tuple[datetime, str] | None = None
        while True:
            statement = (
                select(Turn)
                .where(Turn.status.in_(ACTIVE_STATES), Turn.created_at < cutoff)
                .order_by(Turn.created_at, Turn.id)
                .limit(PAGE)
            )
            if after is not None:
                statement = statement.where(tuple_(Turn.created_at, Turn.id) > after)
            async with self.db.session() as session:
                page = (await session.scalars(statement)).all()
            for turn in page:
                yield turn
            if len(page) < PAGE:
                return
            after = (page[-1].created_at, page[-1].id)

    @asynccontextmanager
    async def _lock(self) -> AsyncIterator[bool]:
        """Whether this process may sweep now; on Postgres, held until the sweep ends."""
        if self.db.engine.dialect.name != "postgresql":
            yield True
            return
        async with self.db.session() as session:
            locked = await session.execute(
                text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": SWEEP_LOCK}
            )
            try:
                yield bool(locked.scalar_one())
            finally:
                await session.rollback()  # ends the transaction, and with it the lock
