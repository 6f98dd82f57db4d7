"""One suite for every budget ledger: in-process and Redis."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio as aioredis

from chatplane.errors import ServiceUnavailable
from chatplane.limits.memory import MemoryBudgetLedger
from chatplane.limits.protocol import BudgetRule, BudgetState
from chatplane.limits.redis_stores import redis_limit_stores
from chatplane.limits.stores import LimitStores
from tests.broker.support import REDIS_URL, eventually

from .conftest import FakeClock, StoresFactory

TTL_S = 60.0


def budget(limit_nano: int) -> BudgetRule:
    return BudgetRule(f"budget:{uuid.uuid4().hex}", limit_nano, name="test")


def rid() -> str:
    return uuid.uuid4().hex


async def test_an_unseeded_budget_is_named_and_nothing_is_held(stores: LimitStores) -> None:
    seeded, fresh = budget(1000), budget(1000)
    await stores.budgets.seed("t1", seeded.key, 0, ttl_s=None)
    result = await stores.budgets.reserve("t1", rid(), 100, [seeded, fresh], ttl_s=TTL_S)
    assert (result.ok, result.unseeded) == (False, (fresh.key,))
    assert await stores.budgets.state("t1", seeded.key) == BudgetState(seeded.key, 0, 0)
    assert await stores.budgets.state("t1", fresh.key) is None

    await stores.budgets.seed("t1", fresh.key, 300, ttl_s=3600)
    await stores.budgets.seed("t1", fresh.key, 999, ttl_s=3600)  # exists: left alone
    assert (await stores.budgets.reserve("t1", rid(), 100, [seeded, fresh], ttl_s=TTL_S)).ok
    assert await stores.budgets.state("t1", fresh.key) == BudgetState(fresh.key, 300, 100)


async def test_concurrent_reserves_hold_exactly_what_the_limit_covers(
    stores: LimitStores,
) -> None:
    ten = budget(10_000)
    await stores.budgets.seed("t1", ten.key, 0, ttl_s=None)
    ids = [rid() for _ in range(100)]
    results = await asyncio.gather(
        *[stores.budgets.reserve("t1", i, 1000, [ten], ttl_s=TTL_S) for i in ids]
    )
    held = [i for i, result in zip(ids, results, strict=True) if result.ok]
    assert len(held) == 10
    refused = next(result for result in results if not result.ok)
    assert refused.refused == ten
    assert refused.state == BudgetState(ten.key, 0, 10_000)
    assert await stores.budgets.state("t1", ten.key) == BudgetState(ten.key, 0, 10_000)

    settled = await asyncio.gather(*[stores.budgets.settle("t1", i, 600, [ten.key]) for i in held])
    assert all(settled)
    assert await stores.budgets.state("t1", ten.key) == BudgetState(ten.key, 6000, 0)
    # 4000 left: four more reservations of 1000 fit, a fifth does not.
    more = [await stores.budgets.reserve("t1", rid(), 1000, [ten], ttl_s=TTL_S) for _ in range(5)]
    assert [r.ok for r in more] == [True, True, True, True, False]


async def test_all_or_nothing_across_rules(stores: LimitStores) -> None:
    roomy, tight = budget(10_000), budget(500)
    for rule in (roomy, tight):
        await stores.budgets.seed("t1", rule.key, 0, ttl_s=None)
    result = await stores.budgets.reserve("t1", rid(), 1000, [roomy, tight], ttl_s=TTL_S)
    assert (result.ok, result.refused, result.state) == (
        False,
        tight,
        BudgetState(tight.key, 0, 0),
    )
    assert await stores.budgets.state("t1", roomy.key) == BudgetState(roomy.key, 0, 0)


async def test_reserving_an_id_again_holds_it_once(stores: LimitStores) -> None:
    rule, same = budget(1500), rid()
    await stores.budgets.seed("t1", rule.key, 0, ttl_s=None)
    assert (await stores.budgets.reserve("t1", same, 1000, [rule], ttl_s=TTL_S)).ok
    assert (await stores.budgets.reserve("t1", same, 1000, [rule], ttl_s=TTL_S)).ok
    assert await stores.budgets.state("t1", rule.key) == BudgetState(rule.key, 0, 1000)


async def test_a_second_settle_changes_nothing(stores: LimitStores) -> None:
    rule, once = budget(10_000), rid()
    await stores.budgets.seed("t1", rule.key, 100, ttl_s=None)
    assert (await stores.budgets.reserve("t1", once, 1000, [rule], ttl_s=TTL_S)).ok
    assert await stores.budgets.settle("t1", once, 700, [rule.key])
    assert not await stores.budgets.settle("t1", once, 700, [rule.key])
    assert await stores.budgets.state("t1", rule.key) == BudgetState(rule.key, 800, 0)
    # A settled id reserved again holds nothing.
    assert (await stores.budgets.reserve("t1", once, 1000, [rule], ttl_s=TTL_S)).ok
    assert await stores.budgets.state("t1", rule.key) == BudgetState(rule.key, 800, 0)


async def test_settle_adds_to_existing_counters_only(stores: LimitStores) -> None:
    seeded, missing = budget(10_000), budget(10_000)
    await stores.budgets.seed("t1", seeded.key, 0, ttl_s=None)
    assert not await stores.budgets.settle("t1", rid(), 250, [seeded.key, missing.key])
    assert await stores.budgets.state("t1", seeded.key) == BudgetState(seeded.key, 250, 0)
    assert await stores.budgets.state("t1", missing.key) is None


async def test_an_expired_reservation_stops_counting(stores: LimitStores) -> None:
    rule, late = budget(1000), rid()
    await stores.budgets.seed("t1", rule.key, 0, ttl_s=None)
    # Long enough that a loaded machine still makes the next call before it expires.
    assert (await stores.budgets.reserve("t1", late, 800, [rule], ttl_s=2.0)).ok
    assert not (await stores.budgets.reserve("t1", rid(), 800, [rule], ttl_s=TTL_S)).ok

    async def released() -> bool:
        return await stores.budgets.state("t1", rule.key) == BudgetState(rule.key, 0, 0)

    await eventually(released, timeout_s=10)
    assert not await stores.budgets.settle("t1", late, 300, [rule.key])  # expired: not live
    assert await stores.budgets.state("t1", rule.key) == BudgetState(rule.key, 300, 0)
    assert (await stores.budgets.reserve("t1", rid(), 700, [rule], ttl_s=TTL_S)).ok


async def test_a_record_that_outlives_its_hold_is_not_settled_as_live(
    make_replicas: StoresFactory,
) -> None:
    """Redis expires a key just after its time and the budget drops a hold at it: for that
    millisecond a reservation's record is there while its hold is gone. Settling it then
    releases nothing and says so (the record is kept here past its time to look at that
    millisecond)."""
    stores = make_replicas()
    rule, late = budget(1000), rid()
    await stores.budgets.seed("t1", rule.key, 0, ttl_s=None)
    assert (await stores.budgets.reserve("t1", late, 800, [rule], ttl_s=0.2)).ok
    client = aioredis.from_url(REDIS_URL)
    try:
        [record] = [key async for key in client.scan_iter(match=f"*:reservation:{late}")]
        assert await client.persist(record)

        async def released() -> bool:
            return await stores.budgets.state("t1", rule.key) == BudgetState(rule.key, 0, 0)

        await eventually(released, timeout_s=10)
        assert await client.exists(record)
        assert not await stores.budgets.settle("t1", late, 300, [rule.key])
    finally:
        await client.aclose()
    assert await stores.budgets.state("t1", rule.key) == BudgetState(rule.key, 300, 0)


async def test_a_seeded_counter_expires_with_its_ttl(stores: LimitStores) -> None:
    rule = budget(1000)
    await stores.budgets.seed("t1", rule.key, 10, ttl_s=2)
    assert await stores.budgets.state("t1", rule.key) == BudgetState(rule.key, 10, 0)

    async def gone() -> bool:
        return await stores.budgets.state("t1", rule.key) is None

    await eventually(gone)


async def test_partitions_are_independent(stores: LimitStores) -> None:
    rule = budget(1000)
    await stores.budgets.seed("t1", rule.key, 0, ttl_s=None)
    assert await stores.budgets.state("t2", rule.key) is None


async def test_two_replicas_share_a_budget(make_replicas: StoresFactory) -> None:
    one, two = make_replicas(), make_replicas()
    rule = budget(5000)
    await one.budgets.seed("t1", rule.key, 0, ttl_s=None)
    results = await asyncio.gather(
        *[
            replica.budgets.reserve("t1", rid(), 1000, [rule], ttl_s=TTL_S)
            for replica in (one, two) * 20
        ]
    )
    assert sum(result.ok for result in results) == 5


async def test_an_unreachable_redis_is_a_clear_error() -> None:
    stores = redis_limit_stores("redis://127.0.0.1:1/0", key_prefix="nowhere")
    try:
        with pytest.raises(ServiceUnavailable, match="limit store"):
            await stores.budgets.reserve("t1", rid(), 1, [budget(10)], ttl_s=TTL_S)
        with pytest.raises(ServiceUnavailable):
            await stores.budgets.settle("t1", rid(), 1, ["k"])
        with pytest.raises(ServiceUnavailable):
            await stores.budgets.seed("t1", "k", 0, ttl_s=None)
        with pytest.raises(ServiceUnavailable):
            await stores.budgets.state("t1", "k")
    finally:
        await stores.close()


async def test_reservations_do_not_outlive_their_expiry_in_memory(clock: FakeClock) -> None:
    ledger = MemoryBudgetLedger(clock=clock, max_settled=10)
    rule = budget(10**9)
    await ledger.seed("t1", rule.key, 0, ttl_s=None)
    for _ in range(50):
        assert (await ledger.reserve("t1", rid(), 1, [rule], ttl_s=5)).ok
    for _ in range(50):
        await ledger.settle("t1", rid(), 1, [rule.key])
    clock.advance(5)
    assert await ledger.state("t1", rule.key) == BudgetState(rule.key, 50, 0)
    assert not ledger._reservations  # dropped once expired
    assert not ledger._expiries
    assert len(ledger._settled) <= 10  # settled ids are remembered up to the cap
