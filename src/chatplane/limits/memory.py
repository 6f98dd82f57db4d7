"""The limit stores of the embedded shape: plain dicts in this process, (amortized) O(1)
per call (a reservation's expiry goes through a heap).

Memory stays bounded: an entry that has run out (a full bucket, an expired reservation or
counter) is dropped when it is next touched, and a store at its size cap drops expired
entries and then the least recently used ones. Dropping a live entry forgets a little:
a bucket forgets what it spent (it lets a burst through again), a budget counter reads as
unseeded (the caller seeds it again from the usage records)."""

from __future__ import annotations

import heapq
import itertools
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from chatplane.limits import gcra
from chatplane.limits.protocol import (
    AdmitResult,
    BudgetRule,
    BudgetState,
    RateDecision,
    RateRule,
    ReserveResult,
    SlotDecision,
    SlotRule,
)

K = TypeVar("K")
V = TypeVar("V")
Clock = Callable[[], float]
# How long a settled reservation id is remembered, so a second settle changes nothing.
SETTLED_TTL_S = 7 * 24 * 3600
# Entries looked at per call for having run out, besides the ones the call touches.
_SWEEP_PER_CALL = 4
# A store at its cap makes room for this share of it at once, so sweeps stay rare.
_ROOM_SHARE = 0.1


def _make_room(entries: OrderedDict[K, V], max_entries: int, expired: Callable[[V], bool]) -> None:
    """Before an insert: at the cap, drop what has run out and then the least recently
    used entries, down to 90% of the cap."""
    if len(entries) < max_entries:
        return
    for key in [k for k, value in entries.items() if expired(value)]:
        del entries[key]
    while len(entries) > max_entries * (1 - _ROOM_SHARE):
        entries.popitem(last=False)


def _sweep_oldest(entries: OrderedDict[K, V], expired: Callable[[V], bool]) -> None:
    """Drop a few run-out entries from the least recently used end."""
    for _ in range(_SWEEP_PER_CALL):
        if not entries:
            return
        key = next(iter(entries))
        if not expired(entries[key]):
            return
        del entries[key]


def _unique(keys: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(keys))


# Rate limits -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RatePlan:
    """A rate check's steps before anything is taken."""

    rules: tuple[RateRule, ...]
    steps: tuple[gcra.Step, ...]
    levels: dict[tuple[str, str], float]  # per bucket, after the request
    now: int

    @property
    def taken(self) -> bool:
        return all(step.allowed for step in self.steps)

    def decisions(self, *, committed: bool) -> list[RateDecision]:
        return [
            gcra.decision(
                rule,
                step.allowed,
                step.level_after_us if committed else step.level_us,
                step.retry_us,
            )
            for rule, step in zip(self.rules, self.steps, strict=True)
        ]


class MemoryRateLimiter:
    def __init__(self, *, clock: Clock = time.monotonic, max_keys: int = 100_000) -> None:
        self._clock = clock
        self._max_keys = max_keys
        self._tats: OrderedDict[tuple[str, str], int] = OrderedDict()  # TAT in us

    async def check(self, partition: str, rules: Sequence[RateRule]) -> list[RateDecision]:
        plan = self.plan(partition, rules)
        if plan.taken:
            self.commit(plan)
        return plan.decisions(committed=plan.taken)

    def plan(self, partition: str, rules: Sequence[RateRule]) -> RatePlan:
        """Every rule's step, nothing taken yet (`commit` takes it)."""
        gcra.validate(rules)
        now = int(self._clock() * gcra.US)
        _sweep_oldest(self._tats, lambda tat: tat <= now)
        levels: dict[tuple[str, str], float] = {}  # a key named twice sees its first use
        steps: list[gcra.Step] = []
        for rule in rules:
            bucket = (partition, rule.key)
            level = levels.get(bucket)
            if level is None:
                level = max(0, self._tats.get(bucket, now) - now)
            step = gcra.step(rule, level)
            steps.append(step)
            if step.allowed:
                levels[bucket] = step.level_after_us
        return RatePlan(tuple(rules), tuple(steps), levels, now)

    def commit(self, plan: RatePlan) -> None:
        for bucket, level in plan.levels.items():
            self._store(bucket, plan.now + math.floor(level), plan.now)

    def _store(self, bucket: tuple[str, str], tat: int, now: int) -> None:
        self._tats.pop(bucket, None)
        if tat <= now:  # full again: nothing to remember
            return
        _make_room(self._tats, self._max_keys, lambda old: old <= now)
        self._tats[bucket] = tat

    async def reset(self, partition: str, key: str) -> None:
        self._tats.pop((partition, key), None)

    async def close(self) -> None:
        self._tats.clear()


# Concurrency slots ------------------------------------------------------------------------


class MemorySlotLimiter:
    """Leases never expire here: a process that dies takes its leases along."""

    def __init__(self) -> None:
        self._holders: dict[tuple[str, str], dict[str, None]] = {}  # slot key -> lease ids
        self._leases: dict[tuple[str, str], set[str]] = {}  # (partition, lease) -> slot keys

    async def acquire(
        self, partition: str, lease_id: str, rules: Sequence[SlotRule]
    ) -> SlotDecision:
        refused = self.refusal(partition, lease_id, rules)
        if refused is not None:
            return refused
        self.take(partition, lease_id, rules)
        return SlotDecision(allowed=True)

    def refusal(
        self, partition: str, lease_id: str, rules: Sequence[SlotRule]
    ) -> SlotDecision | None:
        """The refusal of the first full rule, or None when the lease may take its slots."""
        for rule in rules:
            holders = self._holders.get((partition, rule.key), {})
            if lease_id not in holders and len(holders) >= rule.limit:
                return SlotDecision(allowed=False, refused=rule, in_use=len(holders))
        return None

    def take(self, partition: str, lease_id: str, rules: Sequence[SlotRule]) -> None:
        for rule in rules:
            self._holders.setdefault((partition, rule.key), {})[lease_id] = None
            self._leases.setdefault((partition, lease_id), set()).add(rule.key)

    async def release(self, partition: str, lease_id: str) -> None:
        for key in self._leases.pop((partition, lease_id), ()):
            holders = self._holders.get((partition, key))
            if holders is None:
                continue
            holders.pop(lease_id, None)
            if not holders:
                del self._holders[(partition, key)]

    async def close(self) -> None:
        self._holders.clear()
        self._leases.clear()


# Budget reservations ----------------------------------------------------------------------


@dataclass(slots=True)
class _Budget:
    spent: int
    expires_at: float | None
    held: dict[str, int] = field(default_factory=dict)  # reservation id -> amount
    reserved: int = 0


@dataclass(frozen=True, slots=True)
class _Reservation:
    expires_at: float
    keys: tuple[str, ...]


class MemoryBudgetLedger:
    def __init__(
        self,
        *,
        clock: Clock = time.monotonic,
        max_keys: int = 100_000,
        max_settled: int = 100_000,
    ) -> None:
        self._clock = clock
        self._max_keys = max_keys
        self._max_settled = max_settled
        self._budgets: OrderedDict[tuple[str, str], _Budget] = OrderedDict()
        self._reservations: dict[tuple[str, str], _Reservation] = {}
        self._expiries: list[tuple[float, int, str, str]] = []  # heap: when, seq, partition, id
        self._seq = itertools.count()
        # (partition, id) -> when it may be forgotten; in that order, as the TTL is fixed.
        self._settled: OrderedDict[tuple[str, str], float] = OrderedDict()

    async def reserve(
        self,
        partition: str,
        reservation_id: str,
        amount_nano: int,
        rules: Sequence[BudgetRule],
        *,
        ttl_s: float,
    ) -> ReserveResult:
        result, hold = self.examine(partition, reservation_id, amount_nano, rules)
        if hold:
            self.hold(partition, reservation_id, amount_nano, rules, ttl_s=ttl_s)
        return result

    def examine(
        self, partition: str, reservation_id: str, amount_nano: int, rules: Sequence[BudgetRule]
    ) -> tuple[ReserveResult, bool]:
        """What reserving would answer, and whether `hold` must follow (False when the id
        is held or settled already, or the answer is a refusal); nothing held yet."""
        now = self._now()
        rid = (partition, reservation_id)
        if rid in self._reservations or rid in self._settled:
            return ReserveResult(ok=True), False  # nothing more to hold
        budgets = [self._budget(partition, rule.key, now) for rule in rules]
        unseeded = _unique(rule.key for rule, b in zip(rules, budgets, strict=True) if b is None)
        if unseeded:
            return ReserveResult(ok=False, unseeded=tuple(unseeded)), False
        for rule, budget in zip(rules, budgets, strict=True):
            assert budget is not None
            if budget.spent + budget.reserved + amount_nano > rule.limit_nano:
                state = BudgetState(rule.key, budget.spent, budget.reserved)
                return ReserveResult(ok=False, refused=rule, state=state), False
        return ReserveResult(ok=True), True

    def hold(
        self,
        partition: str,
        reservation_id: str,
        amount_nano: int,
        rules: Sequence[BudgetRule],
        *,
        ttl_s: float,
    ) -> None:
        """Hold what `examine` found fits, right after it (nothing may run in between)."""
        keys = _unique(rule.key for rule in rules)
        for key in keys:
            budget = self._budgets[(partition, key)]
            budget.held[reservation_id] = amount_nano
            budget.reserved += amount_nano
        expires_at = self._clock() + ttl_s
        self._reservations[(partition, reservation_id)] = _Reservation(expires_at, tuple(keys))
        heapq.heappush(self._expiries, (expires_at, next(self._seq), partition, reservation_id))

    async def settle(
        self, partition: str, reservation_id: str, actual_nano: int, keys: Sequence[str]
    ) -> bool:
        now = self._now()
        rid = (partition, reservation_id)
        if rid in self._settled:
            return False
        reservation = self._reservations.pop(rid, None)
        if reservation is not None:
            self._unhold(partition, reservation_id, reservation.keys)
        for key in _unique(keys):
            budget = self._budget(partition, key, now)
            if budget is not None:
                budget.spent += actual_nano
        if len(self._settled) >= self._max_settled:
            self._settled.popitem(last=False)
        self._settled[rid] = now + SETTLED_TTL_S
        return reservation is not None

    async def seed(self, partition: str, key: str, spent_nano: int, *, ttl_s: int | None) -> None:
        now = self._now()
        if self._budget(partition, key, now) is not None:
            return
        _make_room(self._budgets, self._max_keys, lambda b: _ended(b, now))
        expires_at = None if ttl_s is None else now + ttl_s
        self._budgets[(partition, key)] = _Budget(spent_nano, expires_at)

    async def state(self, partition: str, key: str) -> BudgetState | None:
        budget = self._budget(partition, key, self._now())
        if budget is None:
            return None
        return BudgetState(key, budget.spent, budget.reserved)

    async def close(self) -> None:
        self._budgets.clear()
        self._reservations.clear()
        self._expiries.clear()
        self._settled.clear()

    def _now(self) -> float:
        """The clock, after dropping what has run out by now."""
        now = self._clock()
        while self._expiries and self._expiries[0][0] <= now:
            expires_at, _, partition, reservation_id = heapq.heappop(self._expiries)
            reservation = self._reservations.get((partition, reservation_id))
            if reservation is not None and reservation.expires_at == expires_at:
                del self._reservations[(partition, reservation_id)]
                self._unhold(partition, reservation_id, reservation.keys)
        while self._settled and next(iter(self._settled.values())) <= now:
            self._settled.popitem(last=False)
        _sweep_oldest(self._budgets, lambda b: _ended(b, now))
        return now

    def _budget(self, partition: str, key: str, now: float) -> _Budget | None:
        budget = self._budgets.get((partition, key))
        if budget is None:
            return None
        if _ended(budget, now):
            del self._budgets[(partition, key)]
            return None
        self._budgets.move_to_end((partition, key))
        return budget

    def _unhold(self, partition: str, reservation_id: str, keys: Iterable[str]) -> None:
        for key in keys:
            budget = self._budgets.get((partition, key))
            if budget is not None and reservation_id in budget.held:
                budget.reserved -= budget.held.pop(reservation_id)


def _ended(budget: _Budget, now: float) -> bool:
    return budget.expires_at is not None and budget.expires_at <= now


# Admissions: the three kinds at once ------------------------------------------------------


class MemoryAdmissions:
    """The three stores in one step: atomic because nothing here awaits between the checks
    and the commits (the event loop runs nothing else in between)."""

    def __init__(
        self, rates: MemoryRateLimiter, slots: MemorySlotLimiter, budgets: MemoryBudgetLedger
    ) -> None:
        self._rates = rates
        self._slots = slots
        self._budgets = budgets

    async def admit(
        self,
        partition: str,
        lease_id: str,
        rates: Sequence[RateRule],
        slots: Sequence[SlotRule],
        budgets: Sequence[BudgetRule],
        amount_nano: int,
        *,
        budget_ttl_s: float,
    ) -> AdmitResult:
        plan = self._rates.plan(partition, rates)
        if not plan.taken:
            return AdmitResult(tuple(plan.decisions(committed=False)))
        full = self._slots.refusal(partition, lease_id, slots)
        if full is not None:
            return AdmitResult(tuple(plan.decisions(committed=False)), full)
        budget, hold = ReserveResult(ok=True), False
        if budgets:
            budget, hold = self._budgets.examine(partition, lease_id, amount_nano, budgets)
        if not budget.ok:
            return AdmitResult(tuple(plan.decisions(committed=False)), _TAKEN, budget)
        self._rates.commit(plan)
        self._slots.take(partition, lease_id, slots)
        if hold:
            self._budgets.hold(partition, lease_id, amount_nano, budgets, ttl_s=budget_ttl_s)
        return AdmitResult(tuple(plan.decisions(committed=True)), _TAKEN, budget)

    async def finish(
        self,
        partition: str,
        lease_id: str,
        *,
        slots: bool,
        reservation_id: str | None,
        actual_nano: int,
        budget_keys: Sequence[str],
    ) -> None:
        if slots:
            await self._slots.release(partition, lease_id)
        if reservation_id is not None:
            await self._budgets.settle(partition, reservation_id, actual_nano, budget_keys)

    async def close(self) -> None:
        return None


_TAKEN = SlotDecision(allowed=True)
