"""The per-address limit counted in a model call's admission (one store call for both), on
the in-process stores and on Redis: all or nothing with the caller's own limits, counted per
address under the caller's tenant."""

from __future__ import annotations

import dataclasses
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from chatplane.auth.principal import Principal
from chatplane.db import migrate
from chatplane.db.engine import Database, create_engine
from chatplane.errors import TooManyRequests
from chatplane.limits.protocol import Admissions, RateDecision, RateLimiter, RateRule
from chatplane.limits.service import AddressCheck, LimitService
from chatplane.limits.stores import LimitStores
from tests.conftest import make_settings

from .conftest import StoresFactory

ADDRESS_LIMIT = 3
USER_RPM = 5


class CountedRates:
    """The real rate limiter, counting its calls (each is one store round trip)."""

    def __init__(self, inner: RateLimiter, calls: Counter[str]) -> None:
        self.inner, self.calls = inner, calls

    async def check(self, partition: str, rules: Sequence[RateRule]) -> list[RateDecision]:
        self.calls["rates.check"] += 1
        return await self.inner.check(partition, rules)

    async def reset(self, partition: str, key: str) -> None:
        await self.inner.reset(partition, key)

    async def close(self) -> None:
        await self.inner.close()


class CountedAdmissions:
    def __init__(self, inner: Admissions, calls: Counter[str]) -> None:
        self.inner, self.calls = inner, calls

    async def admit(self, *args: Any, **kwargs: Any) -> Any:
        self.calls["admissions.admit"] += 1
        return await self.inner.admit(*args, **kwargs)

    async def finish(self, *args: Any, **kwargs: Any) -> None:
        self.calls["admissions.finish"] += 1
        await self.inner.finish(*args, **kwargs)

    async def close(self) -> None:
        await self.inner.close()


@dataclasses.dataclass
class Setup:
    service: LimitService
    stores: LimitStores
    calls: Counter[str]


@pytest.fixture
async def setup(tmp_path: Path, make_stores: StoresFactory) -> AsyncIterator[Setup]:
    settings = make_settings(
        tmp_path,
        rate_limit_ip_zones={"gateway": ADDRESS_LIMIT},
        rate_limit_user_rpm=USER_RPM,
        rate_limit_key_rpm=0,
    )
    await migrate.upgrade(settings.resolved_database_url)
    db = Database(create_engine(settings))
    stores = make_stores()
    calls: Counter[str] = Counter()
    counted = dataclasses.replace(
        stores,
        rates=CountedRates(stores.rates, calls),
        admissions=CountedAdmissions(stores.admissions, calls),
    )
    yield Setup(LimitService(settings, db, counted), stores, calls)
    await db.close()


def caller(tenant: str | None = None) -> Principal:
    user = uuid.uuid4().hex
    return Principal(
        user_id=user,
        tenant_id=tenant or uuid.uuid4().hex,
        email=f"{user}@example.com",
        role="member",
    )


async def no_measure() -> tuple[int, float]:
    return 0, 0.0


async def admit(setup: Setup, who: Principal, address: AddressCheck | None) -> None:
    admission = await setup.service.admit(
        who,
        lease_id=uuid.uuid4().hex,
        zone="gateway",
        measure=no_measure,
        count_request=True,
        address=address,
    )
    await admission.finish(0.0)


async def left(setup: Setup, partition: str, key: str, limit: int) -> int:
    """Units left in a bucket now (a cost of 0 only looks)."""
    [decision] = await setup.stores.rates.check(partition, [RateRule(key, limit, cost=0)])
    return decision.remaining


async def test_the_address_is_counted_in_the_admission_s_one_store_call(setup: Setup) -> None:
    who = caller()
    address = AddressCheck("gateway", "10.1.0.1")
    admission = await setup.service.admit(
        who,
        lease_id=uuid.uuid4().hex,
        zone="gateway",
        measure=no_measure,
        count_request=True,
        address=address,
    )
    assert setup.calls == Counter({"admissions.admit": 1})  # no per-address call of its own
    assert address.taken
    # The headers describe the tightest rule: the address's (3) before the user's (5).
    assert admission.decision is not None
    assert (admission.decision.rule.name, admission.decision.remaining) == ("ip", 2)
    key = "ip:gateway:10.1.0.1"
    assert await left(setup, who.tenant_id, key, ADDRESS_LIMIT) == ADDRESS_LIMIT - 1
    assert await left(setup, "ip", key, ADDRESS_LIMIT) == ADDRESS_LIMIT  # not counted twice

    # A check already counted is not counted again.
    await admit(setup, who, address)
    assert await left(setup, who.tenant_id, key, ADDRESS_LIMIT) == ADDRESS_LIMIT - 1


async def test_an_address_refusal_takes_nothing_from_the_caller_s_limits(setup: Setup) -> None:
    who = caller()
    for _ in range(ADDRESS_LIMIT):
        await admit(setup, who, AddressCheck("gateway", "10.1.0.2"))
    with pytest.raises(TooManyRequests) as refused:
        await admit(setup, who, AddressCheck("gateway", "10.1.0.2"))
    assert refused.value.code == "rate_limited"
    assert refused.value.extra["limit"] == "ip"
    assert refused.value.extra["_headers"]["RateLimit-Limit"] == str(ADDRESS_LIMIT)
    user_key = f"rpm:user:{who.user_id}"
    assert await left(setup, who.tenant_id, user_key, USER_RPM) == USER_RPM - ADDRESS_LIMIT
    # From another address the same caller still has its own room.
    await admit(setup, who, AddressCheck("gateway", "10.1.0.3"))
    assert await left(setup, who.tenant_id, user_key, USER_RPM) == USER_RPM - ADDRESS_LIMIT - 1


async def test_a_refusal_of_the_caller_s_limits_takes_no_address_unit(setup: Setup) -> None:
    who = caller()
    for i in range(USER_RPM):  # from addresses of their own
        await admit(setup, who, AddressCheck("gateway", f"10.2.0.{i}"))
    with pytest.raises(TooManyRequests) as refused:
        await admit(setup, who, AddressCheck("gateway", "10.2.1.1"))
    assert refused.value.extra["limit"] == "user_rpm"
    key = "ip:gateway:10.2.1.1"
    assert await left(setup, who.tenant_id, key, ADDRESS_LIMIT) == ADDRESS_LIMIT


async def test_an_address_counts_per_tenant_and_apart_from_the_unadmitted(setup: Setup) -> None:
    """The address's bucket of an admission lives in the caller's tenant partition (one
    Redis Cluster slot per call); requests that end before an admission count in the
    address's own."""
    tenant = uuid.uuid4().hex
    for _ in range(ADDRESS_LIMIT):
        await admit(setup, caller(tenant), AddressCheck("gateway", "10.3.0.1"))
    with pytest.raises(TooManyRequests):  # another user of the same tenant: same bucket
        await admit(setup, caller(tenant), AddressCheck("gateway", "10.3.0.1"))
    await admit(setup, caller(), AddressCheck("gateway", "10.3.0.1"))  # another tenant
    decision = await setup.service.check_ip("gateway", "10.3.0.1")
    assert decision is not None
    assert decision.remaining == ADDRESS_LIMIT - 1


async def test_a_requests_check_counts_the_address_in_the_same_call(setup: Setup) -> None:
    """As a gateway cache hit does (no model call, so no admission)."""
    who = caller()
    for _ in range(ADDRESS_LIMIT):
        await setup.service.check_requests(
            who, "gateway", address=AddressCheck("gateway", "10.4.0.1")
        )
    assert setup.calls == Counter({"rates.check": ADDRESS_LIMIT})
    with pytest.raises(TooManyRequests) as refused:
        await setup.service.check_requests(
            who, "gateway", address=AddressCheck("gateway", "10.4.0.1")
        )
    assert refused.value.extra["limit"] == "ip"
    user_key = f"rpm:user:{who.user_id}"
    assert await left(setup, who.tenant_id, user_key, USER_RPM) == USER_RPM - ADDRESS_LIMIT


async def test_a_zone_without_an_address_limit_adds_no_rule(setup: Setup, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, rate_limit_ip_rpm=0, rate_limit_ip_zones={"auth": 5})
    service = LimitService(settings, setup.service.db, setup.stores)
    who = caller()
    address = AddressCheck("gateway", "10.5.0.1")
    admission = await service.admit(
        who,
        lease_id=uuid.uuid4().hex,
        zone="gateway",
        measure=no_measure,
        count_request=True,
        address=address,
    )
    assert address.taken  # nothing is left to check when the response starts
    assert admission.decision is not None
    assert admission.decision.rule.name == "user_rpm"
    assert await left(setup, who.tenant_id, "ip:gateway:10.5.0.1", 1) == 1
