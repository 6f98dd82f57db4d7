"""The cache across real API processes: with in-process and Redis TTLs of an hour (so only
the invalidation can explain what changes), a change made through API 1 takes effect on
API 2 within a second: a revoked key, a disabled user, a lowered limit, a new model."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import httpx
import pytest

from tests.broker.support import eventually
from tests.scale.conftest import PASSWORD
from tests.scale.procs import Cluster, Proc, new_key

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

WITHIN_S = 1.0
HOUR = "3600"
BODY = {"model": "mock-echo", "messages": [{"role": "user", "content": "hi"}]}


@dataclass
class Deployment:
    first: httpx.AsyncClient  # API 1, as the operator (a superadmin's admin key)
    second: Proc  # API 2
    tenant: str


@pytest.fixture
async def deployment(cluster: Cluster) -> AsyncIterator[Deployment]:
    tenant = f"cache-{uuid.uuid4().hex[:10]}"
    email = f"owner@{tenant}.example.com"
    admin_key = await new_key(
        cluster.env, email, password=PASSWORD, tenant=tenant, name="ops", scopes=("chat", "admin")
    )
    await make_superadmin(cluster.env["CHATPLANE_DATABASE_URL"], email)
    long_ttls = {"CHATPLANE_CACHE_LOCAL_TTL_S": HOUR, "CHATPLANE_CACHE_TTL_S": HOUR}
    first, second = cluster.api("api-1", **long_ttls), cluster.api("api-2", **long_ttls)
    await asyncio.gather(first.wait_ready(), second.wait_ready())
    headers = {"authorization": f"Bearer {admin_key}"}
    async with httpx.AsyncClient(base_url=first.base_url, headers=headers, timeout=30) as client:
        yield Deployment(client, second, tenant)


async def make_superadmin(database_url: str, email: str) -> None:
    """No API does this on purpose: operators set it in the database."""
    connection = await asyncpg.connect(database_url.replace("postgresql+asyncpg", "postgresql"))
    try:
        await connection.execute("UPDATE users SET is_superadmin = true WHERE email = $1", email)
    finally:
        await connection.close()


async def new_member(cluster: Cluster, tenant: str, name: str) -> tuple[str, str]:
    email = f"{name}@{tenant}.example.com"
    return email, await new_key(cluster.env, email, password=PASSWORD, tenant=tenant, name=name)


async def status_on(proc: Proc, key: str, path: str = "/v1/models") -> int:
    async with httpx.AsyncClient(base_url=proc.base_url, timeout=10) as client:
        response = await client.get(path, headers={"authorization": f"Bearer {key}"})
    return response.status_code


async def id_of_key(deployment: Deployment, key: str) -> str:
    keys = (await deployment.first.get("/api/admin/keys")).json()
    return str(next(k["id"] for k in keys if key.startswith(k["prefix"])))


async def id_of_user(deployment: Deployment, email: str) -> str:
    users = (await deployment.first.get("/api/admin/users", params={"email": email})).json()
    return str(next(u["id"] for u in users["items"] if u["email"] == email))


async def check_a_revoked_key_is_refused_by_the_other_api_within_a_second(
    cluster: Cluster, deployment: Deployment
) -> None:
    _, key = await new_member(cluster, deployment.tenant, "revoked")
    assert await status_on(deployment.second, key) == 200  # now cached on API 2
    key_id = await id_of_key(deployment, key)

    revoked = await deployment.first.delete(f"/api/admin/keys/{key_id}")
    assert revoked.status_code == 204, revoked.text

    async def refused() -> bool:
        return await status_on(deployment.second, key) == 401

    await eventually(refused, timeout_s=WITHIN_S)


async def check_a_disabled_user_is_refused_by_the_other_api_within_a_second(
    cluster: Cluster, deployment: Deployment
) -> None:
    email, key = await new_member(cluster, deployment.tenant, "disabled")
    assert await status_on(deployment.second, key) == 200
    user_id = await id_of_user(deployment, email)

    changed = await deployment.first.patch(f"/api/admin/users/{user_id}", json={"disabled": True})
    assert changed.status_code == 200, changed.text

    async def refused() -> bool:
        return await status_on(deployment.second, key) == 401

    await eventually(refused, timeout_s=WITHIN_S)


async def check_a_lowered_key_limit_holds_on_the_other_api_within_a_second(
    cluster: Cluster, deployment: Deployment
) -> None:
    _, key = await new_member(cluster, deployment.tenant, "limited")
    headers = {"authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=deployment.second.base_url, timeout=10) as second:
        before = await second.post("/v1/chat/completions", json=BODY, headers=headers)
        assert before.status_code == 200, before.text
        assert before.headers["ratelimit-limit"] != "2"  # the default: its policy is cached
        key_id = await id_of_key(deployment, key)

        lowered = await deployment.first.patch(f"/api/admin/keys/{key_id}/limits", json={"rpm": 2})
        assert lowered.status_code == 200, lowered.text

        async def applied() -> bool:
            response = await second.post("/v1/chat/completions", json=BODY, headers=headers)
            return response.headers.get("ratelimit-limit") == "2"

        await eventually(applied, timeout_s=WITHIN_S)


async def check_a_new_model_is_served_by_the_other_api_within_a_second(
    cluster: Cluster, deployment: Deployment
) -> None:
    name = f"{deployment.tenant}-model"
    _, key = await new_member(cluster, deployment.tenant, "models")

    async def listed() -> bool:
        async with httpx.AsyncClient(base_url=deployment.second.base_url, timeout=10) as client:
            models = await client.get("/v1/models", headers={"authorization": f"Bearer {key}"})
        return name in {model["id"] for model in models.json()["data"]}

    assert not await listed()
    created = await deployment.first.post(
        "/api/admin/models", json={"name": name, "base_url": "http://127.0.0.1:9/v1"}
    )
    assert created.status_code == 201, created.text

    await eventually(listed, timeout_s=WITHIN_S)


async def check_the_cache_is_counted_in_metrics(cluster: Cluster, deployment: Deployment) -> None:
    _, key = await new_member(cluster, deployment.tenant, "counted")
    for _ in range(3):
        assert await status_on(deployment.second, key) == 200
    async with httpx.AsyncClient(base_url=deployment.second.base_url, timeout=10) as client:
        text = (await client.get("/metrics")).text
    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("chatplane_cache_lookups_total{")
    }
    hit = 'chatplane_cache_lookups_total{cache="principals",result="hit",tier="local"}'
    miss = 'chatplane_cache_lookups_total{cache="principals",result="miss",tier="local"}'
    assert samples[hit] >= 2
    assert samples[miss] >= 1


async def test_changes_through_one_api_take_effect_on_the_other_within_a_second(
    cluster: Cluster, deployment: Deployment
) -> None:
    """One pair of processes for every check (starting them is what takes time)."""
    await check_a_revoked_key_is_refused_by_the_other_api_within_a_second(cluster, deployment)
    await check_a_disabled_user_is_refused_by_the_other_api_within_a_second(cluster, deployment)
    await check_a_lowered_key_limit_holds_on_the_other_api_within_a_second(cluster, deployment)
    await check_a_new_model_is_served_by_the_other_api_within_a_second(cluster, deployment)
    await check_the_cache_is_counted_in_metrics(cluster, deployment)
