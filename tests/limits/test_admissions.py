"""One suite for every combined admission store (rates, slots and a budget reservation in
one step, and its end in one more): in-process and Redis."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from chatplane.errors import ServiceUnavailable
from chatplane.limits.protocol import (
    AdmitResult,
    BudgetRule,
    BudgetState,
    RateRule,
    ReserveResult,
    SlotDecision,
    SlotRule,
)
from chatplane.limits.redis_stores import redis_limit_stores
from chatplane.limits.stores import LimitStores
from tests.broker.support import eventually

from .conftest import StoresFactory

TTL_S = 60.0


def rate(limit: int, period_s: float = 60.0) -> RateRule:
    return RateRule(uuid.uuid4().hex, limit, period_s, 1, "test_rpm")


def slot(limit: int) -> SlotRule:
    return SlotRule(uuid.uuid4().hex, limit, "test_concurrency")


def budget(limit_nano: int) -> BudgetRule:
    return BudgetRule(f"budget:{uuid.uuid4().hex}", limit_nano, name="test_day")


def lease() -> str:
    return uuid.uuid4().hex


async def seeded(stores: LimitStores, limit_nano: int, spent_nano: int = 0) -> BudgetRule:
    rule = budget(limit_nano)
    await stores.budgets.seed("t1", rule.key, spent_nano, ttl_s=None)
    return rule


async def remaining(stores: LimitStores, rule: RateRule) -> int:
    """Units left under `rule` now (a cost of 0 only looks)."""
    [decision] = await stores.rates.check(
        "t1", [RateRule(rule.key, rule.limit, rule.period_s, cost=0)]
    )
    return decision.remaining


async def admit(
    stores: LimitStores,
    holder: str,
    rates: list[RateRule],
    slots: list[SlotRule],
    budgets: list[BudgetRule],
    amount_nano: int = 1000,
) -> AdmitResult:
    return await stores.admissions.admit(
        "t1", holder, rates, slots, budgets, amount_nano, budget_ttl_s=TTL_S
    )


async def finish(stores: LimitStores, holder: str, actual_nano: int, keys: list[str]) -> None:
    await stores.admissions.finish(
        "t1", holder, slots=True, reservation_id=holder, actual_nano=actual_nano, budget_keys=keys
    )


async def slot_in_use(stores: LimitStores, rule: SlotRule) -> int:
    """How many slots are taken under `rule` (asked as a full rule, which takes nothing)."""
    decision = await stores.slots.acquire("t1", lease(), [SlotRule(rule.key, 0)])
    assert not decision.allowed
    return decision.in_use


async def test_an_admission_takes_all_three_and_finish_gives_back(stores: LimitStores) -> None:
    per_minute, one, day = rate(5), slot(1), await seeded(stores, 10_000, 100)
    holder = lease()

    result = await admit(stores, holder, [per_minute], [one], [day])
    assert result.admitted
    assert [d.remaining for d in result.rates] == [4]  # after this request
    assert result.slots == SlotDecision(allowed=True)
    assert result.budget == ReserveResult(ok=True)
    assert await remaining(stores, per_minute) == 4
    assert await slot_in_use(stores, one) == 1
    assert await stores.budgets.state("t1", day.key) == BudgetState(day.key, 100, 1000)

    await finish(stores, holder, 700, [day.key])
    assert await slot_in_use(stores, one) == 0
    assert await stores.budgets.state("t1", day.key) == BudgetState(day.key, 800, 0)
    assert await remaining(stores, per_minute) == 4  # a request stays counted


async def test_a_rate_refusal_takes_nothing_at_all(stores: LimitStores) -> None:
    roomy, once = rate(10), rate(1)
    one, day = slot(1), await seeded(stores, 10_000)
    assert (await stores.rates.check("t1", [once]))[0].allowed

    result = await admit(stores, lease(), [roomy, once], [one], [day])
    assert not result.admitted
    assert [d.allowed for d in result.rates] == [True, False]
    assert result.rates[0].remaining == 10  # as it is: nothing was taken
    assert result.rates[1].retry_after_s > 0
    assert (result.slots, result.budget) == (None, None)  # not looked at
    assert await remaining(stores, roomy) == 10
    assert await slot_in_use(stores, one) == 0
    assert await stores.budgets.state("t1", day.key) == BudgetState(day.key, 0, 0)


async def test_a_full_slot_takes_no_rate_unit_and_reserves_nothing(stores: LimitStores) -> None:
    per_minute, two, one = rate(5), slot(2), slot(1)
    day = await seeded(stores, 10_000)
    assert (await stores.slots.acquire("t1", lease(), [one])).allowed

    result = await admit(stores, lease(), [per_minute], [two, one], [day])
    assert not result.admitted
    assert result.slots == SlotDecision(allowed=False, refused=one, in_use=1)
    assert result.budget is None
    assert [(d.allowed, d.remaining) for d in result.rates] == [(True, 5)]  # nothing taken
    assert await remaining(stores, per_minute) == 5
    assert await slot_in_use(stores, two) == 0
    assert await stores.budgets.state("t1", day.key) == BudgetState(day.key, 0, 0)


async def test_a_budget_refusal_takes_no_rate_unit_and_no_slot(stores: LimitStores) -> None:
    per_minute, one = rate(5), slot(1)
    roomy, tight = await seeded(stores, 10_000), await seeded(stores, 1500, 600)

    result = await admit(stores, lease(), [per_minute], [one], [roomy, tight])
    assert not result.admitted
    assert result.budget is not None
    assert (result.budget.ok, result.budget.refused) == (False, tight)
    assert result.budget.state == BudgetState(tight.key, 600, 0)
    assert await remaining(stores, per_minute) == 5
    assert await slot_in_use(stores, one) == 0
    assert await stores.budgets.state("t1", roomy.key) == BudgetState(roomy.key, 0, 0)


async def test_an_unseeded_budget_takes_nothing_until_seeded(stores: LimitStores) -> None:
    per_minute, one = rate(5), slot(1)
    known, fresh = await seeded(stores, 10_000), budget(10_000)
    holder = lease()

    result = await admit(stores, holder, [per_minute], [one], [known, fresh])
    assert result.budget is not None
    assert (result.budget.ok, result.budget.unseeded) == (False, (fresh.key,))
    assert await remaining(stores, per_minute) == 5
    assert await slot_in_use(stores, one) == 0
    assert await stores.budgets.state("t1", known.key) == BudgetState(known.key, 0, 0)

    await stores.budgets.seed("t1", fresh.key, 250, ttl_s=3600)
    assert (await admit(stores, holder, [per_minute], [one], [known, fresh])).admitted
    assert await stores.budgets.state("t1", fresh.key) == BudgetState(fresh.key, 250, 1000)


async def test_the_same_lease_holds_one_slot_and_one_reservation(stores: LimitStores) -> None:
    per_minute, one, day = rate(5), slot(1), await seeded(stores, 10_000)
    holder = lease()
    for _ in range(2):
        assert (await admit(stores, holder, [per_minute], [one], [day])).admitted
    assert await slot_in_use(stores, one) == 1
    assert await stores.budgets.state("t1", day.key) == BudgetState(day.key, 0, 1000)
    assert await remaining(stores, per_minute) == 3  # each admitted call counts


async def test_finish_settles_exactly_once(stores: LimitStores) -> None:
    one, day = slot(1), await seeded(stores, 10_000)
    holder = lease()
    assert (await admit(stores, holder, [], [one], [day])).admitted
    await finish(stores, holder, 400, [day.key])
    await finish(stores, holder, 400, [day.key])  # again: changes nothing
    assert await stores.budgets.state("t1", day.key) == BudgetState(day.key, 400, 0)
    assert await slot_in_use(stores, one) == 0
    # A settled reservation admitted again holds nothing more.
    assert (await admit(stores, holder, [], [], [day])).admitted
    assert await stores.budgets.state("t1", day.key) == BudgetState(day.key, 400, 0)
    # The single-kind settle agrees that it is settled.
    assert not await stores.budgets.settle("t1", holder, 400, [day.key])


async def test_finish_of_only_a_slot_or_only_a_reservation(stores: LimitStores) -> None:
    one, day = slot(1), await seeded(stores, 10_000)
    slotted, reserved = lease(), lease()
    assert (await admit(stores, slotted, [], [one], [])).admitted
    assert (await admit(stores, reserved, [], [], [day])).admitted
    await stores.admissions.finish(
        "t1", reserved, slots=False, reservation_id=reserved, actual_nano=5, budget_keys=[day.key]
    )
    assert await slot_in_use(stores, one) == 1
    assert await stores.budgets.state("t1", day.key) == BudgetState(day.key, 5, 0)
    await stores.admissions.finish(
        "t1", slotted, slots=True, reservation_id=None, actual_nano=0, budget_keys=[]
    )
    assert await slot_in_use(stores, one) == 0
    assert await stores.budgets.state("t1", day.key) == BudgetState(day.key, 5, 0)


async def test_concurrent_admissions_take_exactly_what_the_budget_covers(
    stores: LimitStores,
) -> None:
    # Per day: no unit refills while the test runs, however slow the machine.
    per_day, roomy = rate(1000, period_s=86_400.0), slot(1000)
    ten = await seeded(stores, 10_000)
    holders = [lease() for _ in range(100)]
    results = await asyncio.gather(
        *[admit(stores, holder, [per_day], [roomy], [ten]) for holder in holders]
    )
    admitted = [h for h, result in zip(holders, results, strict=True) if result.admitted]
    assert len(admitted) == 10
    assert await stores.budgets.state("t1", ten.key) == BudgetState(ten.key, 0, 10_000)
    assert await remaining(stores, per_day) == 990  # the 90 refused took no unit
    assert await slot_in_use(stores, roomy) == 10  # and no slot

    await asyncio.gather(*[finish(stores, holder, 600, [ten.key]) for holder in admitted])
    assert await stores.budgets.state("t1", ten.key) == BudgetState(ten.key, 6000, 0)
    assert await slot_in_use(stores, roomy) == 0


async def test_two_replicas_share_one_admission_count(make_replicas: StoresFactory) -> None:
    one, two = make_replicas(), make_replicas()
    per_minute, seven = rate(20), slot(7)
    results = await asyncio.gather(
        *[admit(replica, lease(), [per_minute], [seven], []) for replica in (one, two) * 25]
    )
    assert sum(result.admitted for result in results) == 7
    assert await remaining(one, per_minute) == 13


async def test_another_replica_finishes_a_lease(make_replicas: StoresFactory) -> None:
    one, two = make_replicas(), make_replicas()
    single, day = slot(1), await seeded(one, 10_000)
    holder = lease()
    assert (await admit(one, holder, [], [single], [day])).admitted
    await finish(two, holder, 300, [day.key])  # the lease record names its slots
    assert await slot_in_use(one, single) == 0
    assert await one.budgets.state("t1", day.key) == BudgetState(day.key, 300, 0)


async def test_a_lease_from_a_combined_admission_is_renewed(
    make_replicas: StoresFactory,
) -> None:
    ttl = 2.0  # renewed every 0.67 s: margin for a loaded machine
    live, crashed = make_replicas(lease_ttl_s=ttl), make_replicas(lease_ttl_s=ttl)
    two = slot(2)
    assert (await admit(live, "live", [], [two], [])).admitted
    assert (await admit(crashed, "crashed", [], [two], [])).admitted
    await crashed.close()  # gone without finishing: its lease is no longer renewed

    async def crashed_lease_expired() -> bool:
        return (await admit(live, "newcomer", [], [two], [])).admitted

    await eventually(crashed_lease_expired)

    # Well past the TTL, the live lease (and the newcomer's) still hold their slots.
    await asyncio.sleep(2.5 * ttl)
    full = await admit(live, lease(), [], [two], [])
    assert full.slots == SlotDecision(allowed=False, refused=two, in_use=2)
    await finish(live, "live", 0, [])
    assert (await admit(live, lease(), [], [two], [])).admitted


async def test_an_unreachable_redis_is_a_clear_error() -> None:
    stores = redis_limit_stores("redis://127.0.0.1:1/0", key_prefix="nowhere")
    try:
        with pytest.raises(ServiceUnavailable, match="limit store"):
            await admit(stores, lease(), [rate(1)], [slot(1)], [budget(10)])
        with pytest.raises(ServiceUnavailable):
            await finish(stores, lease(), 1, ["k"])
    finally:
        await stores.close()
