"""The limit stores of the scaled shape: one Lua script per call (see `redis_scripts`), so
each call is one round trip, atomic, and exact across replicas. The scripts run through the
process's `ScriptRunner` (connections kept for them), everything else on the shared client.

Every key is `{prefix}:limits:{partition}:...` with braces around the partition: the hash
tag puts all keys of one call in one Redis Cluster slot. The stores take the client they
share (`connect`) and leave closing it to whoever made it (`LimitStores.close`)."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Sequence
from typing import Any

import structlog
from redis import exceptions as redis_errors

from chatplane.limits import gcra
from chatplane.limits.memory import SETTLED_TTL_S
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
from chatplane.limits.redis import (
    MAX_CONNECTIONS,
    RedisWindowCounter,
    ScriptRunner,
    connect,
    store_errors,
)
from chatplane.limits.redis_scripts import (
    ACQUIRE_SLOTS,
    ADMIT,
    BUDGET_STATE,
    FINISH,
    RATE_CHECK,
    RELEASE_SLOTS,
    RENEW_SLOTS,
    RESERVE,
    SETTLE,
)
from chatplane.limits.stores import LimitStores

log = structlog.get_logger("chatplane.limits")

_NOT_SEEDED = -1


class _Keys:
    def __init__(self, key_prefix: str) -> None:
        self._prefix = f"{key_prefix}:limits:"

    def __call__(self, partition: str, kind: str, name: str) -> str:
        return f"{self._prefix}{{{partition}}}:{kind}:{name}"

    def budget(self, partition: str, key: str) -> list[str]:
        """B:spent, B:held, B:amounts (see `redis_scripts`)."""
        base = self(partition, "budget", key)
        return [f"{base}:spent", f"{base}:held", f"{base}:amounts"]


def _rate_args(rules: Sequence[RateRule]) -> list[int | float]:
    args: list[int | float] = []
    for rule in rules:
        args += [rule.limit, rule.period_s * gcra.US, rule.cost]
    return args


def _rate_decisions(rules: Sequence[RateRule], reply: Sequence[int]) -> list[RateDecision]:
    """Per rule: allowed, remaining, reset (us), retry after (us)."""
    decisions = []
    for i, rule in enumerate(rules):
        allowed, remaining, reset_us, retry_us = reply[4 * i : 4 + 4 * i]
        decisions.append(
            RateDecision(
                rule=rule,
                allowed=allowed == 1,
                remaining=int(remaining),
                reset_s=int(reset_us) / gcra.US,
                retry_after_s=int(retry_us) / gcra.US,
            )
        )
    return decisions


def _reserve_result(rules: Sequence[BudgetRule], reply: Sequence[int]) -> ReserveResult:
    """{0}, {-1, unseeded rules...} or {refused rule, spent, reserved} (rules 1-based)."""
    if reply[0] == 0:
        return ReserveResult(ok=True)
    if reply[0] == _NOT_SEEDED:
        unseeded = dict.fromkeys(rules[i - 1].key for i in reply[1:])
        return ReserveResult(ok=False, unseeded=tuple(unseeded))
    refused = rules[reply[0] - 1]
    state = BudgetState(refused.key, int(reply[1]), int(reply[2]))
    return ReserveResult(ok=False, refused=refused, state=state)


def _ttl_ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


# Rate limits -------------------------------------------------------------------------------


class RedisRateLimiter:
    def __init__(self, scripts: ScriptRunner, *, key_prefix: str) -> None:
        self._client = scripts.client
        self._key = _Keys(key_prefix)
        self._check = scripts.register(RATE_CHECK)

    async def check(self, partition: str, rules: Sequence[RateRule]) -> list[RateDecision]:
        gcra.validate(rules)
        if not rules:
            return []
        keys = [self._key(partition, "rate", rule.key) for rule in rules]
        with store_errors():
            reply: list[int] = await self._check(keys=keys, args=_rate_args(rules))
        return _rate_decisions(rules, reply[1:])

    async def reset(self, partition: str, key: str) -> None:
        with store_errors():
            await self._client.delete(self._key(partition, "rate", key))

    async def close(self) -> None:
        return None


# Concurrency slots ------------------------------------------------------------------------


class RedisSlotLimiter:
    """Renews the leases this process holds every `lease_ttl_s / 3`, all in one round trip,
    from one task started with the first acquire. A lease whose slots are gone when it is
    renewed (it expired while this process stalled) is dropped with a warning; its holder
    keeps running, over the limit for once, rather than being cut off."""

    def __init__(
        self, scripts: ScriptRunner, *, key_prefix: str, lease_ttl_s: float = 60.0
    ) -> None:
        if lease_ttl_s <= 0:
            raise ValueError("lease_ttl_s must be positive")
        self._client = client = scripts.client
        self._key = _Keys(key_prefix)
        self._lease_ttl_s = lease_ttl_s
        self.lease_ttl_ms = _ttl_ms(lease_ttl_s)
        self._acquire = scripts.register(ACQUIRE_SLOTS)
        self._release = scripts.register(RELEASE_SLOTS)
        self._renew = client.register_script(RENEW_SLOTS)  # pipelined on the client
        self._held: dict[tuple[str, str], tuple[str, ...]] = {}  # (partition, lease) -> sets
        self._renewer: asyncio.Task[None] | None = None

    async def acquire(
        self, partition: str, lease_id: str, rules: Sequence[SlotRule]
    ) -> SlotDecision:
        if not rules:
            return SlotDecision(allowed=True)
        slot_keys = tuple(self._key(partition, "slots", rule.key) for rule in rules)
        record = self._key(partition, "lease", lease_id)
        args: list[str | int] = [lease_id, self.lease_ttl_ms, *(rule.limit for rule in rules)]
        with store_errors():
            reply: list[int] = await self._acquire(keys=[record, *slot_keys], args=args)
        if reply[0] != 0:
            return SlotDecision(allowed=False, refused=rules[reply[0] - 1], in_use=int(reply[1]))
        self.track(partition, lease_id, slot_keys)
        return SlotDecision(allowed=True)

    async def release(self, partition: str, lease_id: str) -> None:
        slot_keys = self.untrack(partition, lease_id)
        record = self._key(partition, "lease", lease_id)
        with store_errors():
            await self._release(keys=[record, *slot_keys], args=[lease_id])

    def track(self, partition: str, lease_id: str, slot_keys: Sequence[str]) -> None:
        """Renew this lease, which holds a slot in each of `slot_keys`, until `untrack`."""
        held = self._held.get((partition, lease_id), ())
        self._held[(partition, lease_id)] = tuple(dict.fromkeys((*held, *slot_keys)))
        self._start_renewer()

    def untrack(self, partition: str, lease_id: str) -> tuple[str, ...]:
        """Stop renewing the lease (it is being released); the slot sets it was known to
        hold."""
        return self._held.pop((partition, lease_id), ())

    async def close(self) -> None:
        """Stop renewing; leases still held expire by themselves."""
        task, self._renewer = self._renewer, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._held.clear()

    def _start_renewer(self) -> None:
        if self._renewer is not None and not self._renewer.done():
            return
        if self._renewer is not None and not self._renewer.cancelled():
            log.error("limits.slot_renewer_crashed", error=repr(self._renewer.exception()))
        self._renewer = asyncio.get_running_loop().create_task(
            self._renew_forever(), name="chatplane-slot-lease-renewer"
        )

    async def _renew_forever(self) -> None:
        # Until `close` drops this task: redis-py can swallow the cancellation.
        while self._renewer is asyncio.current_task():
            await asyncio.sleep(self._lease_ttl_s / 3)
            if not self._held:
                continue
            try:
                await self._renew_all()
            except (redis_errors.RedisError, OSError) as exc:
                log.warning("limits.slot_renewal_failed", error=str(exc), leases=len(self._held))

    async def _renew_all(self) -> None:
        leases = list(self._held.items())
        results = await self._renew_pipeline(leases)
        if any(isinstance(result, redis_errors.NoScriptError) for result in results):
            await self._client.script_load(RENEW_SLOTS)  # Redis restarted (or flushed scripts)
            results = await self._renew_pipeline(leases)
        for (lease, slot_keys), held in zip(leases, results, strict=True):
            if isinstance(held, Exception):
                raise held
            if held == 0 and self._held.get(lease) is slot_keys:  # not released meanwhile
                del self._held[lease]
                log.warning("limits.slot_lease_lost", partition=lease[0], lease_id=lease[1])

    async def _renew_pipeline(self, leases: list[tuple[tuple[str, str], tuple[str, ...]]]) -> Any:
        async with self._client.pipeline(transaction=False) as pipe:
            for (partition, lease_id), slot_keys in leases:
                record = self._key(partition, "lease", lease_id)
                pipe.evalsha(
                    self._renew.sha,
                    1 + len(slot_keys),
                    record,
                    *slot_keys,
                    lease_id,
                    self.lease_ttl_ms,
                )
            return await pipe.execute(raise_on_error=False)


# Budget reservations ----------------------------------------------------------------------


class RedisBudgetLedger:
    def __init__(self, scripts: ScriptRunner, *, key_prefix: str) -> None:
        self._client = scripts.client
        self._key = _Keys(key_prefix)
        self._reserve = scripts.register(RESERVE)
        self._settle = scripts.register(SETTLE)
        self._state = scripts.register(BUDGET_STATE)

    async def reserve(
        self,
        partition: str,
        reservation_id: str,
        amount_nano: int,
        rules: Sequence[BudgetRule],
        *,
        ttl_s: float,
    ) -> ReserveResult:
        keys = [self._key(partition, "reservation", reservation_id)]
        for rule in rules:
            keys += self._key.budget(partition, rule.key)
        args: list[str | int] = [
            reservation_id,
            amount_nano,
            _ttl_ms(ttl_s),
            *(rule.limit_nano for rule in rules),
        ]
        with store_errors():
            reply: list[int] = await self._reserve(keys=keys, args=args)
        return _reserve_result(rules, reply)

    async def settle(
        self, partition: str, reservation_id: str, actual_nano: int, keys: Sequence[str]
    ) -> bool:
        record = self._key(partition, "reservation", reservation_id)
        spent = [self._key.budget(partition, key)[0] for key in keys]
        args: list[str | int] = [reservation_id, actual_nano, SETTLED_TTL_S * 1000]
        with store_errors():
            released: int = await self._settle(keys=[record, *spent], args=args)
        return released == 1

    async def seed(self, partition: str, key: str, spent_nano: int, *, ttl_s: int | None) -> None:
        spent = self._key.budget(partition, key)[0]
        with store_errors():
            await self._client.set(spent, spent_nano, nx=True, ex=ttl_s)

    async def state(self, partition: str, key: str) -> BudgetState | None:
        with store_errors():
            reply: list[int] | None = await self._state(keys=self._key.budget(partition, key))
        if reply is None:
            return None
        return BudgetState(key, int(reply[0]), int(reply[1]))

    async def close(self) -> None:
        return None


# Admissions: the three kinds at once ------------------------------------------------------

_ADMITTED, _RATE_REFUSED, _SLOT_REFUSED, _BUDGET_REFUSED = 0, 1, 2, 3


class RedisAdmissions:
    """`ADMIT` and `FINISH`: one round trip each. The leases it takes are renewed by
    `slots` (the process's `RedisSlotLimiter`), like those `slots.acquire` takes."""

    def __init__(self, scripts: ScriptRunner, *, key_prefix: str, slots: RedisSlotLimiter) -> None:
        self._key = _Keys(key_prefix)
        self._slots = slots
        self._admit = scripts.register(ADMIT)
        self._finish = scripts.register(FINISH)

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
        gcra.validate(rates)
        slot_keys = [self._key(partition, "slots", rule.key) for rule in slots]
        keys = [self._key(partition, "rate", rule.key) for rule in rates]
        keys += [self._key(partition, "lease", lease_id), *slot_keys]
        keys.append(self._key(partition, "reservation", lease_id))
        for rule in budgets:
            keys += self._key.budget(partition, rule.key)
        args: list[str | int | float] = [
            len(rates),
            len(slots),
            len(budgets),
            lease_id,
            self._slots.lease_ttl_ms,
            _ttl_ms(budget_ttl_s),
            amount_nano,
            *_rate_args(rates),
            *(rule.limit for rule in slots),
            *(rule.limit_nano for rule in budgets),
        ]
        with store_errors():
            status, rate_reply, detail = await self._admit(keys=keys, args=args)
        decisions = tuple(_rate_decisions(rates, rate_reply))
        if status == _RATE_REFUSED:
            return AdmitResult(decisions)
        if status == _SLOT_REFUSED:
            refused = SlotDecision(
                allowed=False, refused=slots[detail[0] - 1], in_use=int(detail[1])
            )
            return AdmitResult(decisions, refused)
        if status == _BUDGET_REFUSED:
            return AdmitResult(decisions, _TAKEN, _reserve_result(budgets, detail))
        if slot_keys:
            self._slots.track(partition, lease_id, slot_keys)
        return AdmitResult(decisions, _TAKEN, ReserveResult(ok=True))

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
        if not slots and reservation_id is None:
            return
        slot_keys = self._slots.untrack(partition, lease_id) if slots else ()
        keys = [self._key(partition, "lease", lease_id), *slot_keys]
        if reservation_id is not None:
            keys.append(self._key(partition, "reservation", reservation_id))
            keys += [self._key.budget(partition, key)[0] for key in budget_keys]
        args: list[str | int] = [
            len(slot_keys),
            int(slots),
            int(reservation_id is not None),
            lease_id,
            reservation_id or "",
            actual_nano,
            SETTLED_TTL_S * 1000,
        ]
        with store_errors():
            await self._finish(keys=keys, args=args)

    async def close(self) -> None:
        return None


_TAKEN = SlotDecision(allowed=True)


def redis_limit_stores(
    url: str, *, key_prefix: str, lease_ttl_s: float = 60.0, max_connections: int = MAX_CONNECTIONS
) -> LimitStores:
    """The Redis stores of one process on one client and the script connections kept beside
    it, up to `max_connections` each (no I/O until the first call)."""
    client = connect(url, max_connections=max_connections)
    scripts = ScriptRunner(client, max_connections=max_connections)
    slots = RedisSlotLimiter(scripts, key_prefix=key_prefix, lease_ttl_s=lease_ttl_s)
    return LimitStores(
        rates=RedisRateLimiter(scripts, key_prefix=key_prefix),
        slots=slots,
        budgets=RedisBudgetLedger(scripts, key_prefix=key_prefix),
        admissions=RedisAdmissions(scripts, key_prefix=key_prefix, slots=slots),
        counter=RedisWindowCounter(client, key_prefix=key_prefix),
        redis=client,
        scripts=scripts,
    )
