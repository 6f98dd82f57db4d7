"""The limit stores of one process as one bundle, closed together."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from chatplane.limits.counters import MemoryWindowCounter, WindowCounter
from chatplane.limits.memory import (
    Clock,
    MemoryAdmissions,
    MemoryBudgetLedger,
    MemoryRateLimiter,
    MemorySlotLimiter,
)
from chatplane.limits.protocol import Admissions, BudgetLedger, RateLimiter, SlotLimiter

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from chatplane.limits.redis import ScriptRunner


@dataclass(frozen=True, slots=True)
class LimitStores:
    rates: RateLimiter
    slots: SlotLimiter
    budgets: BudgetLedger
    admissions: Admissions  # the three above in one step, on the same counts
    counter: WindowCounter
    redis: Redis | None = None  # the client the Redis stores share, closed after them
    scripts: ScriptRunner | None = None  # the connections their scripts run on, likewise

    async def close(self) -> None:
        try:
            for store in (self.admissions, self.slots, self.rates, self.budgets, self.counter):
                await store.close()
        finally:
            try:
                if self.scripts is not None:
                    await self.scripts.close()
            finally:
                if self.redis is not None:
                    await self.redis.aclose()


def memory_limit_stores(*, clock: Clock = time.monotonic) -> LimitStores:
    rates = MemoryRateLimiter(clock=clock)
    slots = MemorySlotLimiter()
    budgets = MemoryBudgetLedger(clock=clock)
    return LimitStores(
        rates=rates,
        slots=slots,
        budgets=budgets,
        admissions=MemoryAdmissions(rates, slots, budgets),
        counter=MemoryWindowCounter(),
    )
