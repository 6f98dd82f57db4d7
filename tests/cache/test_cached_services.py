"""The services that read through the cache, through the API: a credential or a policy is
read from the database once, and a change made through the API reaches another process of
the deployment (here: services of their own on the same database and Redis prefix, as a
second API process holds them) within a second."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from chatplane.auth.service import AuthService
from chatplane.cache import Cache, create_cache
from chatplane.errors import Unauthorized
from chatplane.limits.service import LimitService
from tests.admin.support import access_token, add_user, expect, new_org
from tests.api.live import LiveServer
from tests.broker.support import eventually
from tests.cache.support import lookups

WITHIN_S = 1.0


@pytest.fixture
async def other_cache(live: LiveServer) -> AsyncIterator[Cache]:
    """The cache another API process of this deployment would hold; without Redis there
    is no other process, and these tests check the server's own cache (at once)."""
    if live.services.settings.redis_url is None:
        yield live.services.cache
        return
    cache = create_cache(live.services.settings)
    await cache.start()
    yield cache
    await cache.close()


def other_auth(live: LiveServer, cache: Cache) -> AuthService:
    s = live.services
    return AuthService(s.db, s.settings, s.auth.passwords, s.audit, cache)


def refused(check: Callable[[], Awaitable[object]]) -> Callable[[], Awaitable[bool]]:
    async def condition() -> bool:
        try:
            await check()
        except Unauthorized:
            return True
        return False

    return condition


async def test_a_key_is_read_once_then_served_from_the_cache(live: LiveServer) -> None:
    org = await new_org(live)
    before = lookups("principals", "local", "hit")
    async with live.client(org.owner.key) as client:
        for _ in range(3):
            expect(await client.get("/api/auth/me"), 200)
        metrics = (await client.get("/metrics")).text
    assert lookups("principals", "local", "hit") >= before + 2
    assert 'chatplane_cache_lookups_total{cache="principals",result="hit",tier="local"}' in (
        metrics
    )


async def test_a_revoked_key_is_refused_by_another_process_within_a_second(
    live: LiveServer, other_cache: Cache
) -> None:
    org = await new_org(live)
    async with live.client(org.owner.key) as client:
        created = expect(await client.post("/api/keys", json={"name": "doomed"}), 201)
        auth = other_auth(live, other_cache)
        assert (await auth.authenticate_api_key(created["key"])).api_key_id == created["id"]
        expect(await client.delete(f"/api/keys/{created['id']}"), 204)

    await eventually(refused(lambda: auth.authenticate_api_key(created["key"])), timeout_s=WITHIN_S)


async def test_a_disabled_user_is_refused_by_another_process_within_a_second(
    live: LiveServer, other_cache: Cache
) -> None:
    org = await new_org(live)
    member = await add_user(live, org)
    token = await access_token(live, member.email)
    auth = other_auth(live, other_cache)
    await auth.authenticate_api_key(member.key)
    await auth.authenticate_session_token(token)
    async with live.client(org.owner.key) as admin:
        expect(await admin.patch(f"/api/admin/users/{member.id}", json={"disabled": True}), 200)

    await eventually(refused(lambda: auth.authenticate_api_key(member.key)), timeout_s=WITHIN_S)
    await eventually(refused(lambda: auth.authenticate_session_token(token)), timeout_s=WITHIN_S)


async def test_a_logout_is_refused_by_another_process_within_a_second(
    live: LiveServer, other_cache: Cache
) -> None:
    org = await new_org(live)
    token = await access_token(live, org.owner.email)
    auth = other_auth(live, other_cache)
    await auth.authenticate_session_token(token)
    async with live.client(token) as client:
        expect(await client.post("/api/auth/logout"), 204)

    await eventually(refused(lambda: auth.authenticate_session_token(token)), timeout_s=WITHIN_S)


async def test_a_changed_key_limit_reaches_another_process_within_a_second(
    live: LiveServer, other_cache: Cache
) -> None:
    s = live.services
    org = await new_org(live)
    async with live.client(org.owner.key) as client:
        created = expect(await client.post("/api/keys", json={"name": "limited"}), 201)
        limits = LimitService(s.settings, s.db, s.limit_stores, cache=other_cache)
        policy = await limits.policy(org.tenant_id)
        assert limits.effective(policy, created["id"]).key_rpm == s.settings.rate_limit_key_rpm
        changed = await client.patch(f"/api/admin/keys/{created['id']}/limits", json={"rpm": 3})
        assert changed.status_code == 200, changed.text

    async def lowered() -> bool:
        policy = await limits.policy(org.tenant_id)
        return limits.effective(policy, created["id"]).key_rpm == 3

    await eventually(lowered, timeout_s=WITHIN_S)
    await limits.close()


async def test_a_disabled_tenant_is_refused_by_another_process_within_a_second(
    live: LiveServer, other_cache: Cache
) -> None:
    operator = await new_org(live, superadmin=True)
    org = await new_org(live)
    auth = other_auth(live, other_cache)
    await auth.authenticate_api_key(org.owner.key)
    async with live.client(operator.owner.key) as client:
        response = await client.patch(
            f"/api/admin/tenants/{org.tenant_id}", json={"disabled": True}
        )
    assert response.status_code == 200, response.text

    await eventually(refused(lambda: auth.authenticate_api_key(org.owner.key)), timeout_s=WITHIN_S)
