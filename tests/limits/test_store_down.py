"""When the limit store (Redis) is unreachable: zones that fail open let requests through,
the others (the gateway by default) refuse with a retryable 503, budgets always refuse; every
failure is logged and counted, never silently unlimited."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from chatplane.auth.models import Tenant, User
from chatplane.auth.principal import Principal
from chatplane.db import migrate
from chatplane.db.engine import Database, create_engine
from chatplane.errors import ServiceUnavailable
from chatplane.limits.models import Budget
from chatplane.limits.redis_stores import redis_limit_stores
from chatplane.limits.service import AddressCheck, LimitService
from chatplane.observability.metrics import REDIS_ERRORS
from tests.conftest import make_settings

NOWHERE = "redis://127.0.0.1:1/0"  # nothing listens there


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[LimitService]:
    settings = make_settings(tmp_path, redis_url=NOWHERE, rate_limit_user_rpm=100)
    await migrate.upgrade(settings.resolved_database_url)
    db = Database(create_engine(settings))
    async with db.session() as session:
        session.add_all(
            [
                Tenant(id="t-open", slug="open", name="Open"),
                Tenant(id="t-budget", slug="budget", name="Budgeted"),
                User(id="u-open", tenant_id="t-open", email="o@example.com", role="member"),
                User(id="u-budget", tenant_id="t-budget", email="b@example.com", role="member"),
                Budget(
                    tenant_id="t-budget",
                    scope="user",
                    subject_id="u-budget",
                    period="day",
                    limit_usd=1.0,
                ),
            ]
        )
        await session.commit()
    stores = redis_limit_stores(NOWHERE, key_prefix="nowhere")
    limits = LimitService(settings, db, stores)
    yield limits
    await stores.close()
    await db.close()


def principal(user: str, tenant: str) -> Principal:
    return Principal(user_id=user, tenant_id=tenant, email=f"{user}@example.com", role="member")


def errors() -> float:
    return REDIS_ERRORS.labels("limits")._value.get()  # type: ignore[attr-defined, no-any-return]


async def small_call() -> tuple[int, float]:
    return 10, 0.01


async def admit(limits: LimitService, who: Principal, zone: str) -> None:
    admission = await limits.admit(
        who,
        lease_id=f"lease-{zone}-{who.user_id}",
        zone=zone,
        measure=small_call,
        count_request=True,
    )
    await admission.finish(0.0)


async def test_open_zones_pass_and_the_gateway_refuses(service: LimitService) -> None:
    who = principal("u-open", "t-open")
    before = errors()
    assert await service.check_ip("chat", "10.0.0.1") is None  # open: let through
    assert await service.check_requests(who, "chat") is None
    await admit(service, who, "chat")
    with pytest.raises(ServiceUnavailable) as refused:
        await service.check_ip("gateway", "10.0.0.1")
    assert refused.value.code == "limits_unavailable"
    assert refused.value.extra["retry_after"] == 2
    with pytest.raises(ServiceUnavailable, match="Limits cannot be checked"):
        await admit(service, who, "gateway")
    assert errors() >= before + 5  # every failure counted


async def test_budgets_fail_closed_in_every_zone(service: LimitService) -> None:
    who = principal("u-budget", "t-budget")
    with pytest.raises(ServiceUnavailable, match="Budgets cannot be checked") as refused:
        await admit(service, who, "chat")  # open for rates, but a budget applies
    assert refused.value.code == "limits_unavailable"
    with pytest.raises(ServiceUnavailable) as refused:
        await admit(service, who, "gateway")
    assert refused.value.code == "limits_unavailable"


async def test_an_admission_with_its_address_fails_as_one_call(service: LimitService) -> None:
    """The address counted in the admission: one failure, the zone's answer, and nothing
    left for the middleware to check when the response starts."""
    who = principal("u-open", "t-open")
    before = errors()
    address = AddressCheck("gateway", "10.0.0.2")
    with pytest.raises(ServiceUnavailable) as refused:
        await service.admit(
            who,
            lease_id="lease-address",
            zone="gateway",
            measure=small_call,
            count_request=True,
            address=address,
        )
    assert refused.value.code == "limits_unavailable"
    assert address.taken
    assert errors() == before + 1
    through = AddressCheck("chat", "10.0.0.2")
    assert await service.check_requests(who, "chat", address=through) is None  # open zone
    assert through.taken
