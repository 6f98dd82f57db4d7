"""Redis goes away and comes back: readiness says so, new turns get a clear retryable
error, nothing committed is lost, and everything recovers by itself.

The test runs a Redis server of its own on a free port (the machine's shared Redis is
never stopped)."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.api.sse import read_events, text_of
from tests.own_redis import OwnRedis
from tests.scale.procs import Cluster, new_key
from tests.scale.test_processes import assistant_messages, client, start_turn

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


async def wait_for_status(http: httpx.AsyncClient, path: str, status: int) -> httpx.Response:
    deadline = time.monotonic() + 20
    while True:
        response = await http.get(path)
        if response.status_code == status or time.monotonic() > deadline:
            assert response.status_code == status, response.text
            return response
        await asyncio.sleep(0.1)


async def test_redis_restart(cluster: Cluster, own_redis: OwnRedis) -> None:
    env = {"CHATPLANE_REDIS_URL": own_redis.url}
    api = cluster.api("api", **env)
    cluster.worker("worker", **env)
    await api.wait_ready()
    key = await new_key(cluster.env, "outage@example.com", password="pw-12345678", name="o")

    async with client(api.base_url, key) as http:
        conversation_id, _, events_url = await start_turn(http, "before the outage")
        assert text_of(await read_events(http, events_url)) == "before the outage"

        own_redis.stop()
        down = await wait_for_status(http, "/readyz", 503)
        assert down.json()["checks"]["broker"] != "ok"
        refused = await http.post(
            f"/api/conversations/{conversation_id}/messages", json={"content": "lost?"}
        )
        assert refused.status_code == 503
        assert refused.json()["code"] == "service_unavailable"
        assert refused.headers["retry-after"] == "2"
        # Reads from the database still work, and the refused message was not kept.
        detail = (await http.get(f"/api/conversations/{conversation_id}")).json()
        assert [m["content"] for m in detail["messages"]] == ["before the outage"] * 2

        own_redis.start()
        await wait_for_status(http, "/readyz", 200)
        _, _, after_url = await start_turn(http, "after the outage")
        async with asyncio.timeout(20):
            assert text_of(await read_events(http, after_url)) == "after the outage"
        assert await assistant_messages(http, conversation_id) == ["before the outage"]
