"""One suite for every rate limiter (GCRA): in-process and Redis."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from redis.asyncio import Redis

from chatplane.errors import ServiceUnavailable
from chatplane.limits.memory import MemoryRateLimiter
from chatplane.limits.protocol import RateRule
from chatplane.limits.redis_stores import redis_limit_stores
from chatplane.limits.stores import LimitStores
from tests.broker.support import REDIS_URL, eventually

from .conftest import FakeClock, StoresFactory


def rule(limit: int, period_s: float = 60.0, *, cost: int = 1, key: str = "") -> RateRule:
    return RateRule(key or uuid.uuid4().hex, limit, period_s, cost)


async def test_a_fresh_key_allows_a_burst_of_exactly_the_limit(stores: LimitStores) -> None:
    per_minute = rule(5)
    remaining = []
    for _ in range(5):
        [decision] = await stores.rates.check("t1", [per_minute])
        assert decision.allowed
        assert decision.retry_after_s == 0
        remaining.append(decision.remaining)
    assert remaining == [4, 3, 2, 1, 0]

    [refused] = await stores.rates.check("t1", [per_minute])
    assert not refused.allowed
    assert refused.remaining == 0
    assert 10 < refused.retry_after_s <= 12  # one unit drips back every 12 s
    assert 50 < refused.reset_s <= 60


async def test_the_bucket_refills_after_a_while(stores: LimitStores) -> None:
    fast = rule(2, 1.0)
    for _ in range(2):
        assert (await stores.rates.check("t1", [fast]))[0].allowed
    [refused] = await stores.rates.check("t1", [fast])
    assert not refused.allowed
    assert 0 < refused.retry_after_s <= 0.5

    async def allowed_again() -> bool:
        return (await stores.rates.check("t1", [fast]))[0].allowed

    await eventually(allowed_again)

    peek = rule(2, 1.0, cost=0, key=fast.key)  # a cost of 0 only looks

    async def full_again() -> bool:
        [decision] = await stores.rates.check("t1", [peek])
        return decision.remaining == 2

    await eventually(full_again)


async def test_a_refusal_takes_nothing_under_any_rule(stores: LimitStores) -> None:
    roomy, tight = rule(10), rule(1)
    assert all(d.allowed for d in await stores.rates.check("t1", [roomy, tight]))

    decisions = await stores.rates.check("t1", [roomy, tight])
    assert [d.allowed for d in decisions] == [True, False]
    assert decisions[0].remaining == 9  # as it is now: the refused call took nothing
    assert decisions[0].retry_after_s == 0
    assert decisions[1].retry_after_s > 0

    [after] = await stores.rates.check("t1", [roomy])
    assert after.allowed
    assert after.remaining == 8


async def test_token_costs_take_that_many_units(stores: LimitStores) -> None:
    key = uuid.uuid4().hex
    [first] = await stores.rates.check("t1", [rule(100, cost=60, key=key)])
    assert first.allowed
    assert first.remaining == 40

    [too_many] = await stores.rates.check("t1", [rule(100, cost=50, key=key)])
    assert not too_many.allowed
    assert too_many.remaining == 40
    assert 5 < too_many.retry_after_s <= 6  # 10 more tokens at 0.6 s each

    [fits] = await stores.rates.check("t1", [rule(100, cost=40, key=key)])
    assert fits.allowed
    assert fits.remaining == 0


async def test_a_cost_above_the_limit_never_passes(stores: LimitStores) -> None:
    huge = rule(10, 30, cost=11)
    [decision] = await stores.rates.check("t1", [huge])
    assert not decision.allowed
    assert decision.retry_after_s == 30  # a whole period: shrink the request, do not wait
    assert decision.remaining == 10
    [small] = await stores.rates.check("t1", [rule(10, 30, key=huge.key)])
    assert small.remaining == 9


async def test_concurrent_checks_admit_exactly_the_limit(stores: LimitStores) -> None:
    per_minute = rule(20)
    results = await asyncio.gather(*[stores.rates.check("t1", [per_minute]) for _ in range(200)])
    assert sum(decisions[0].allowed for decisions in results) == 20


async def test_reset_and_partitions(stores: LimitStores) -> None:
    once = rule(1)
    assert (await stores.rates.check("t1", [once]))[0].allowed
    assert not (await stores.rates.check("t1", [once]))[0].allowed
    assert (await stores.rates.check("t2", [once]))[0].allowed  # another partition
    await stores.rates.reset("t1", once.key)
    assert (await stores.rates.check("t1", [once]))[0].allowed


async def test_no_rules_no_decisions(stores: LimitStores) -> None:
    assert await stores.rates.check("t1", []) == []


async def test_invalid_rules_are_refused(stores: LimitStores) -> None:
    with pytest.raises(ValueError, match="limit >= 1"):
        await stores.rates.check("t1", [rule(0)])


async def test_two_replicas_share_one_limit_exactly(make_replicas: StoresFactory) -> None:
    one, two = make_replicas(), make_replicas()
    per_minute = rule(20)
    results = await asyncio.gather(
        *[replica.rates.check("t1", [per_minute]) for replica in (one, two) * 100]
    )
    assert sum(decisions[0].allowed for decisions in results) == 20


async def test_a_bucket_is_forgotten_once_full_again(make_replicas: StoresFactory) -> None:
    stores = make_replicas()
    fast = rule(5, 3.0)
    await stores.rates.check("t1", [fast])
    client = Redis.from_url(REDIS_URL)
    try:
        [key] = [k async for k in client.scan_iter(match=f"*:rate:{fast.key}")]
        assert 0 < await client.pttl(key) <= 600  # one unit: 0.6 s

        async def gone() -> bool:
            return not await client.exists(key)

        await eventually(gone)
    finally:
        await client.aclose()


async def test_an_unreachable_redis_is_a_clear_error() -> None:
    stores = redis_limit_stores("redis://127.0.0.1:1/0", key_prefix="nowhere")
    try:
        with pytest.raises(ServiceUnavailable, match="limit store"):
            await stores.rates.check("t1", [rule(1)])
        with pytest.raises(ServiceUnavailable):
            await stores.rates.reset("t1", "k")
    finally:
        await stores.close()


async def test_exact_arithmetic_on_a_fake_clock(clock: FakeClock) -> None:
    limiter = MemoryRateLimiter(clock=clock)
    four_a_second = rule(4, 1.0)
    for _ in range(4):
        assert (await limiter.check("t1", [four_a_second]))[0].allowed
    [refused] = await limiter.check("t1", [four_a_second])
    assert (refused.allowed, refused.retry_after_s, refused.reset_s) == (False, 0.25, 1.0)
    clock.advance(0.25)
    [again] = await limiter.check("t1", [four_a_second])
    assert (again.allowed, again.remaining, again.reset_s) == (True, 0, 1.0)
    clock.advance(1.0)
    [full] = await limiter.check("t1", [rule(4, 1.0, cost=0, key=four_a_second.key)])
    assert (full.remaining, full.reset_s) == (4, 0.0)


async def test_memory_stays_bounded(clock: FakeClock) -> None:
    limiter = MemoryRateLimiter(clock=clock, max_keys=100)
    for i in range(1000):
        await limiter.check("t1", [rule(5, key=f"k{i}")])
    assert len(limiter._tats) <= 100  # what the cap is for
    [recent] = await limiter.check("t1", [rule(5, key="k999")])
    assert recent.remaining == 3  # the most recently used buckets are kept
