"""The limit stores of the scaled shape: one Lua script per call (see `redis_scripts`), so
each call is one round trip, atomic, and exact across replicas.

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
from redis.asyncio import Redis

from chatplane.limits import gcra
from chatplane.limits.memory import SETTLED_TTL_S
from chatplane.limits.protocol import (
    BudgetRule,
    BudgetState,
    RateDecision,
    RateRule,
    ReserveResult,
    SlotDecision,
    SlotRule,
)
from chatplane.limits.redis import MAX_CONNECTIONS, RedisWindowCounter, connect, store_errors
from chatplane.limits.redis_scripts import (
    ACQUIRE_SLOTS,
    BUDGET_STATE,
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


# Rate limits -------------------------------------------------------------------------------


class RedisRateLimiter:
    def __init__(self, client: Redis, *, key_prefix: str) -> None:
        self._client = client
        self._key = _Keys(key_prefix)
        self._check = client.register_script(RATE_CHECK)

    async def check(self, partition: str, rules: Sequence[RateRule]) -> list[RateDecision]:
        gcra.validate(rules)
        if not rules:
            return []
        keys = [self._key(partition, "rate", rule.key) for rule in rules]
        args: list[int | float] = []
        for rule in rules:
            args += [rule.limit, rule.period_s * gcra.US, rule.cost]
        with store_errors():
            reply: list[int] = await self._check(keys=keys, args=args)
        decisions = []
        for i, rule in enumerate(rules):
            allowed, remaining, reset_us, retry_us = reply[1 + 4 * i : 5 + 4 * i]
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

    def __init__(self, client: Redis, *, key_prefix: str, lease_ttl_s: float = 60.0) -> None:
        if lease_ttl_s <= 0:
            raise ValueError("lease_ttl_s must be positive")
        self._client = client
        self._key = _Keys(key_prefix)
        self._lease_ttl_s = lease_ttl_s
        self._ttl_ms = max(1, math.ceil(lease_ttl_s * 1000))
        self._acquire = client.register_script(ACQUIRE_SLOTS)
        self._release = client.register_script(RELEASE_SLOTS)
        self._renew = client.register_script(RENEW_SLOTS)
        self._held: dict[tuple[str, str], tuple[str, ...]] = {}  # (partition, lease) -> sets
        self._renewer: asyncio.Task[None] | None = None

    async def acquire(
        self, partition: str, lease_id: str, rules: Sequence[SlotRule]
    ) -> SlotDecision:
        if not rules:
            return SlotDecision(allowed=True)
        slot_keys = tuple(self._key(partition, "slots", rule.key) for rule in rules)
        record = self._key(partition, "lease", lease_id)
        args: list[str | int] = [lease_id, self._ttl_ms, *(rule.limit for rule in rules)]
        with store_errors():
            reply: list[int] = await self._acquire(keys=[record, *slot_keys], args=args)
        if reply[0] != 0:
            return SlotDecision(allowed=False, refused=rules[reply[0] - 1], in_use=int(reply[1]))
        held = self._held.get((partition, lease_id), ())
        self._held[(partition, lease_id)] = tuple(dict.fromkeys((*held, *slot_keys)))
        self._start_renewer()
        return SlotDecision(allowed=True)

    async def release(self, partition: str, lease_id: str) -> None:
        slot_keys = self._held.pop((partition, lease_id), ())
        record = self._key(partition, "lease", lease_id)
        with store_errors():
            await self._release(keys=[record, *slot_keys], args=[lease_id])

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
                    self._renew.sha, 1 + len(slot_keys), record, *slot_keys, lease_id, self._ttl_ms
                )
            return await pipe.execute(raise_on_error=False)


# Budget reservations ----------------------------------------------------------------------


class RedisBudgetLedger:
    def __init__(self, client: Redis, *, key_prefix: str) -> None:
        self._client = client
        self._key = _Keys(key_prefix)
        self._reserve = client.register_script(RESERVE)
        self._settle = client.register_script(SETTLE)
        self._state = client.register_script(BUDGET_STATE)

    def _budget_keys(self, partition: str, key: str) -> list[str]:
        base = self._key(partition, "budget", key)
        return [f"{base}:spent", f"{base}:held", f"{base}:amounts"]

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
            keys += self._budget_keys(partition, rule.key)
        ttl_ms = max(1, math.ceil(ttl_s * 1000))
        args: list[str | int] = [
            reservation_id,
            amount_nano,
            ttl_ms,
            *(rule.limit_nano for rule in rules),
        ]
        with store_errors():
            reply: list[int] = await self._reserve(keys=keys, args=args)
        if reply[0] == 0:
            return ReserveResult(ok=True)
        if reply[0] == _NOT_SEEDED:
            unseeded = dict.fromkeys(rules[i - 1].key for i in reply[1:])
            return ReserveResult(ok=False, unseeded=tuple(unseeded))
        refused = rules[reply[0] - 1]
        state = BudgetState(refused.key, int(reply[1]), int(reply[2]))
        return ReserveResult(ok=False, refused=refused, state=state)

    async def settle(
        self, partition: str, reservation_id: str, actual_nano: int, keys: Sequence[str]
    ) -> bool:
        record = self._key(partition, "reservation", reservation_id)
        spent = [self._budget_keys(partition, key)[0] for key in keys]
        args: list[str | int] = [reservation_id, actual_nano, SETTLED_TTL_S * 1000]
        with store_errors():
            released: int = await self._settle(keys=[record, *spent], args=args)
        return released == 1

    async def seed(self, partition: str, key: str, spent_nano: int, *, ttl_s: int | None) -> None:
        spent = self._budget_keys(partition, key)[0]
        with store_errors():
            await self._client.set(spent, spent_nano, nx=True, ex=ttl_s)

    async def state(self, partition: str, key: str) -> BudgetState | None:
        with store_errors():
            reply: list[int] | None = await self._state(keys=self._budget_keys(partition, key))
        if reply is None:
            return None
        return BudgetState(key, int(reply[0]), int(reply[1]))

    async def close(self) -> None:
        return None


def redis_limit_stores(
    url: str, *, key_prefix: str, lease_ttl_s: float = 60.0, max_connections: int = MAX_CONNECTIONS
) -> LimitStores:
    """The four Redis stores of one process on one client (no I/O until the first call)."""
    client = connect(url, max_connections=max_connections)
    return LimitStores(
        rates=RedisRateLimiter(client, key_prefix=key_prefix),
        slots=RedisSlotLimiter(client, key_prefix=key_prefix, lease_ttl_s=lease_ttl_s),
        budgets=RedisBudgetLedger(client, key_prefix=key_prefix),
        counter=RedisWindowCounter(client, key_prefix=key_prefix),
        redis=client,
    )
