"""The limit stores: rate limits (GCRA), concurrency slots and budget reservations, and
`Admissions`, the three together for one model call (one round trip to admit it, one to end
it).

Each has an in-process implementation (the embedded shape) and a Redis one (atomic Lua, one
round trip per call, exact across replicas), behind the protocols here, with one test suite
that runs against both. They know nothing of tenants, users or HTTP: callers pass opaque keys
and numbers; `chatplane.limits.service` decides which keys apply to a request.

Every call names a `partition` (a tenant id, or "ip" for per-address limits): all keys of one
call live in it, and the Redis implementation uses it as the hash tag of every key
(`{prefix}:...:{partition}:...` with braces around the partition), so one script touches one
Redis Cluster slot."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

# Money is counted in integer nano-dollars (1e-9 USD) so sums are exact in Python and Lua
# (doubles hold integers exactly up to 2**53 nano-USD, about 9 million USD).
NANO_USD = 1_000_000_000


def to_nano(usd: float) -> int:
    return round(usd * NANO_USD)


def from_nano(nano: int) -> float:
    return nano / NANO_USD


# Rate limits -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RateRule:
    """At most `limit` units (requests or tokens) per `period_s`, for one key.

    GCRA: a full bucket allows a burst of `limit`; it refills at limit/period_s per second."""

    key: str
    limit: int
    period_s: float = 60.0
    cost: int = 1  # units this request takes (1 for requests, n for tokens)
    name: str = ""  # what the rule limits, e.g. "key_rpm", for errors and headers


@dataclass(frozen=True, slots=True)
class RateDecision:
    rule: RateRule
    allowed: bool
    remaining: int  # units left after this request (if allowed) or now (if not)
    reset_s: float  # until the bucket is full again
    retry_after_s: float  # until this request would be allowed; 0 when allowed


class RateLimiter(Protocol):
    async def check(self, partition: str, rules: Sequence[RateRule]) -> list[RateDecision]:
        """Check every rule in one step (one round trip): if all allow, each takes its cost;
        if any refuses, none takes anything. One decision per rule, in order."""
        ...

    async def reset(self, partition: str, key: str) -> None: ...

    async def close(self) -> None: ...


# Concurrency slots ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SlotRule:
    key: str
    limit: int
    name: str = ""


@dataclass(frozen=True, slots=True)
class SlotDecision:
    allowed: bool
    refused: SlotRule | None = None  # the first rule that was full
    in_use: int = 0  # slots in use under the refused rule


class SlotLimiter(Protocol):
    async def acquire(
        self, partition: str, lease_id: str, rules: Sequence[SlotRule]
    ) -> SlotDecision:
        """Take one slot under every rule, or none (all-or-nothing). A lease expires by
        itself `lease_ttl_s` after the last renewal, so a crashed process leaks nothing;
        the limiter renews the leases this process holds in the background."""
        ...

    async def release(self, partition: str, lease_id: str) -> None:
        """Free the lease's slots (idempotent)."""
        ...

    async def close(self) -> None: ...


# Budget reservations ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BudgetRule:
    """Spend under `key` may not exceed `limit_nano`. `key` names one budget and one period
    (e.g. "tenant:T:day:2026-11-29"); `ttl_s` keeps the counter a little past the period's
    end (None: kept forever, for lifetime budgets)."""

    key: str
    limit_nano: int
    ttl_s: int | None = None
    name: str = ""


@dataclass(frozen=True, slots=True)
class BudgetState:
    key: str
    spent_nano: int  # settled
    reserved_nano: int  # held by live reservations


@dataclass(frozen=True, slots=True)
class ReserveResult:
    ok: bool
    # The keys that have no counter yet: the caller seeds them (from the usage records)
    # and tries again. Nothing was reserved.
    unseeded: tuple[str, ...] = ()
    refused: BudgetRule | None = None  # the first rule the reservation would exceed
    state: BudgetState | None = None  # the refused rule's state


class BudgetLedger(Protocol):
    async def reserve(
        self,
        partition: str,
        reservation_id: str,
        amount_nano: int,
        rules: Sequence[BudgetRule],
        *,
        ttl_s: float,
    ) -> ReserveResult:
        """Hold `amount_nano` under every rule atomically, or nothing. A reservation that is
        never settled expires after `ttl_s` and stops counting. Reserving an id again is a
        no-op that answers ok (idempotent)."""
        ...

    async def settle(
        self, partition: str, reservation_id: str, actual_nano: int, keys: Sequence[str]
    ) -> bool:
        """Release the reservation and add `actual_nano` to the spend of each of `keys` that
        has a counter (a missing counter is seeded later from the usage records, which hold
        this spend). Exactly once per id: a second settle of the same id changes nothing
        (a settled id is remembered for a week), and a settle after the reservation expired
        still adds the spend. True when a live reservation was released."""
        ...

    async def seed(self, partition: str, key: str, spent_nano: int, *, ttl_s: int | None) -> None:
        """Create `key`'s counter with what was spent already, unless it exists."""
        ...

    async def state(self, partition: str, key: str) -> BudgetState | None: ...

    async def close(self) -> None: ...


# Admissions: the three kinds at once ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AdmitResult:
    """What a combined admission found. The kinds are looked at in order, rates, slots,
    budget, and the first that refuses ends it: the later ones are None (not looked at)."""

    rates: tuple[RateDecision, ...] = ()  # one per rule, in order (refused or not)
    slots: SlotDecision | None = None
    budget: ReserveResult | None = None

    @property
    def admitted(self) -> bool:
        return (
            all(decision.allowed for decision in self.rates)
            and self.slots is not None
            and self.slots.allowed
            and self.budget is not None
            and self.budget.ok
        )


class Admissions(Protocol):
    """A request's rate limits, concurrency slots and budget reservation in one step (one
    round trip), and its end in one more. All keys live in one partition."""

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
        """All or nothing: every rate rule takes its cost, the lease takes a slot under
        every slot rule and `amount_nano` is reserved under every budget rule (as the
        reservation `lease_id`), or nothing at all is taken when any of them refuses or a
        budget is unseeded. The rate decisions describe the buckets after the request when
        it was admitted, as they are otherwise. Slots and the reservation are idempotent
        per `lease_id` (as `SlotLimiter.acquire` and `BudgetLedger.reserve`); rate units
        are taken by every admitted call."""
        ...

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
        """Free the lease's slots (when `slots`) and settle the reservation (when one is
        named) with `SlotLimiter.release` and `BudgetLedger.settle`'s semantics: exactly
        once per reservation id."""
        ...

    async def close(self) -> None: ...
