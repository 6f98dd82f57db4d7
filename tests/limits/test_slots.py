"""One suite for every concurrency slot limiter: in-process and Redis."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from chatplane.errors import ServiceUnavailable
from chatplane.limits.protocol import SlotRule
from chatplane.limits.redis_stores import redis_limit_stores
from chatplane.limits.stores import LimitStores
from tests.broker.support import eventually

from .conftest import StoresFactory


def slot(limit: int) -> SlotRule:
    return SlotRule(uuid.uuid4().hex, limit, "test")


def lease() -> str:
    return uuid.uuid4().hex


async def test_slots_are_taken_up_to_the_limit_and_freed(stores: LimitStores) -> None:
    two = slot(2)
    first, second = lease(), lease()
    assert (await stores.slots.acquire("t1", first, [two])).allowed
    assert (await stores.slots.acquire("t1", second, [two])).allowed

    refused = await stores.slots.acquire("t1", lease(), [two])
    assert (refused.allowed, refused.refused, refused.in_use) == (False, two, 2)

    await stores.slots.release("t1", first)
    await stores.slots.release("t1", first)  # idempotent
    await stores.slots.release("t1", lease())  # unknown: nothing happens
    assert (await stores.slots.acquire("t1", lease(), [two])).allowed
    assert not (await stores.slots.acquire("t1", lease(), [two])).allowed


async def test_all_or_nothing_across_rules(stores: LimitStores) -> None:
    roomy, tight = slot(3), slot(1)
    assert (await stores.slots.acquire("t1", lease(), [roomy, tight])).allowed

    refused = await stores.slots.acquire("t1", lease(), [roomy, tight])
    assert (refused.allowed, refused.refused, refused.in_use) == (False, tight, 1)

    # The refused lease took nothing under `roomy`: two of its three slots are still free.
    assert (await stores.slots.acquire("t1", lease(), [roomy])).allowed
    assert (await stores.slots.acquire("t1", lease(), [roomy])).allowed
    assert not (await stores.slots.acquire("t1", lease(), [roomy])).allowed


async def test_the_same_lease_takes_one_slot(stores: LimitStores) -> None:
    one, holder = slot(1), lease()
    assert (await stores.slots.acquire("t1", holder, [one])).allowed
    assert (await stores.slots.acquire("t1", holder, [one])).allowed  # again: still one slot
    assert not (await stores.slots.acquire("t1", lease(), [one])).allowed
    await stores.slots.release("t1", holder)
    assert (await stores.slots.acquire("t1", lease(), [one])).allowed


async def test_partitions_are_independent(stores: LimitStores) -> None:
    one = slot(1)
    assert (await stores.slots.acquire("t1", lease(), [one])).allowed
    assert (await stores.slots.acquire("t2", lease(), [one])).allowed


async def test_concurrent_acquires_take_exactly_the_limit(stores: LimitStores) -> None:
    ten = slot(10)
    decisions = await asyncio.gather(
        *[stores.slots.acquire("t1", lease(), [ten]) for _ in range(100)]
    )
    assert sum(d.allowed for d in decisions) == 10


async def test_two_replicas_share_the_slots(make_replicas: StoresFactory) -> None:
    one, two = make_replicas(), make_replicas()
    seven = slot(7)
    decisions = await asyncio.gather(
        *[replica.slots.acquire("t1", lease(), [seven]) for replica in (one, two) * 25]
    )
    assert sum(d.allowed for d in decisions) == 7


async def test_a_crashed_holder_s_lease_expires_a_live_one_is_renewed(
    make_replicas: StoresFactory,
) -> None:
    ttl = 2.0  # renewed every 0.67 s: margin for a loaded machine
    live, crashed = make_replicas(lease_ttl_s=ttl), make_replicas(lease_ttl_s=ttl)
    two = slot(2)
    assert (await live.slots.acquire("t1", "live", [two])).allowed
    assert (await crashed.slots.acquire("t1", "crashed", [two])).allowed
    await crashed.close()  # gone without releasing: its lease is no longer renewed
    assert not (await live.slots.acquire("t1", "newcomer", [two])).allowed

    async def crashed_lease_expired() -> bool:
        return (await live.slots.acquire("t1", "newcomer", [two])).allowed

    await eventually(crashed_lease_expired)

    # Well past the TTL, the live holder's lease (and the newcomer's) still hold their slots.
    await asyncio.sleep(2.5 * ttl)
    refused = await live.slots.acquire("t1", lease(), [two])
    assert (refused.allowed, refused.in_use) == (False, 2)
    await live.slots.release("t1", "live")
    assert (await live.slots.acquire("t1", lease(), [two])).allowed


async def test_an_unreachable_redis_is_a_clear_error() -> None:
    stores = redis_limit_stores("redis://127.0.0.1:1/0", key_prefix="nowhere")
    try:
        with pytest.raises(ServiceUnavailable, match="limit store"):
            await stores.slots.acquire("t1", lease(), [slot(1)])
        with pytest.raises(ServiceUnavailable):
            await stores.slots.release("t1", lease())
    finally:
        await stores.close()
