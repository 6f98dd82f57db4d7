"""The connections the Redis limit stores run their scripts on (`ScriptRunner`): each reply
goes to the call that asked for it, and a Redis that restarts, stalls or goes away fails only
the calls it cannot answer (a 503 through the stores); the next calls work by themselves.

These tests run a Redis server of their own on a free port (they stop and pause it)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from redis import exceptions as redis_errors
from redis.asyncio import BlockingConnectionPool, Redis

from chatplane.errors import ServiceUnavailable
from chatplane.limits.protocol import RateRule
from chatplane.limits.redis import ScriptRunner
from chatplane.limits.redis_stores import redis_limit_stores
from chatplane.limits.stores import LimitStores
from tests.own_redis import OwnRedis

ECHO = "return ARGV[1]"
NAME = "chatplane-limits-test"
RULE = RateRule(key="user_rpm", limit=2, period_s=60)


@pytest.fixture
async def stores(own_redis: OwnRedis) -> AsyncIterator[LimitStores]:
    stores = redis_limit_stores(own_redis.url, key_prefix="runner")
    yield stores
    await stores.close()


@pytest.fixture
async def probe(own_redis: OwnRedis) -> AsyncIterator[Redis]:
    client = Redis.from_url(own_redis.url, socket_timeout=10)
    yield client
    await client.aclose()


def runner_on(url: str, *, timeout_s: float, max_connections: int = 32) -> ScriptRunner:
    pool = BlockingConnectionPool.from_url(
        url, socket_timeout=timeout_s, socket_connect_timeout=2, client_name=NAME
    )
    return ScriptRunner(Redis.from_pool(pool), max_connections=max_connections)


async def close(runner: ScriptRunner) -> None:
    await runner.close()
    await runner.client.aclose()


async def allowed(stores: LimitStores) -> bool:
    (decision,) = await stores.rates.check("t1", [RULE])
    return decision.allowed


async def test_concurrent_calls_each_get_their_own_reply(own_redis: OwnRedis, probe: Redis) -> None:
    runner = runner_on(own_redis.url, timeout_s=10, max_connections=4)
    echo = runner.register(ECHO)
    try:
        replies = await asyncio.gather(*(echo(keys=[], args=[f"call-{i}"]) for i in range(200)))
        assert replies == [f"call-{i}".encode() for i in range(200)]
        clients = await probe.client_list()
        assert 1 <= sum(client["name"] == NAME for client in clients) <= 4
    finally:
        await close(runner)


async def test_a_restarted_redis_is_used_again_without_a_failed_call(
    own_redis: OwnRedis, stores: LimitStores, probe: Redis
) -> None:
    assert await allowed(stores)
    own_redis.stop()  # its connections close; its scripts and counts are gone
    own_redis.start()
    await probe.ping()  # the process goes on with other work meanwhile
    assert await allowed(stores)  # a new connection, and the script loaded again
    assert await allowed(stores)
    assert not await allowed(stores)  # the limit counts again from the restart


async def test_an_outage_is_a_503_and_recovers_by_itself(
    own_redis: OwnRedis, stores: LimitStores
) -> None:
    assert await allowed(stores)
    own_redis.stop()
    with pytest.raises(ServiceUnavailable):
        await allowed(stores)
    with pytest.raises(ServiceUnavailable):
        await stores.admissions.admit("t1", "lease-1", [RULE], [], [], 0, budget_ttl_s=60)
    own_redis.start()
    assert await allowed(stores)


async def test_a_stalled_call_times_out_and_its_late_reply_reaches_no_one(
    own_redis: OwnRedis, probe: Redis
) -> None:
    runner = runner_on(own_redis.url, timeout_s=0.2)
    echo = runner.register(ECHO)
    try:
        assert await echo(keys=[], args=["warm"]) == b"warm"
        await probe.client_pause(800, all=True)
        with pytest.raises(redis_errors.TimeoutError):
            await echo(keys=[], args=["first"])
        # Wait out the pause: the probe's own command is answered when it ends.
        deadline = time.monotonic() + 10
        while not await probe.ping():
            assert time.monotonic() < deadline
        assert await echo(keys=[], args=["second"]) == b"second"
    finally:
        await close(runner)
