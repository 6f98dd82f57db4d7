"""The Redis tier and invalidation across processes: caches of one deployment (one key
prefix) stand for its processes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from redis.asyncio import Redis

from chatplane.cache import create_cache
from chatplane.cache.tiered import TwoTierCache
from chatplane.settings import Settings
from tests.broker.support import REDIS_URL, delete_keys, eventually, require_redis, unique_prefix
from tests.cache.support import ITEMS, Item, counted, lookups
from tests.conftest import make_settings
from tests.scale.procs import free_port


@pytest.fixture
async def deployment(tmp_path: Path) -> AsyncIterator[tuple[Settings, list[TwoTierCache]]]:
    await require_redis()
    settings = make_settings(tmp_path, redis_url=REDIS_URL, redis_prefix=unique_prefix())
    made: list[TwoTierCache] = []
    yield settings, made
    for cache in made:
        await cache.close()
    await delete_keys(settings.redis_prefix)


async def process(deployment: tuple[Settings, list[TwoTierCache]]) -> TwoTierCache:
    settings, made = deployment
    cache = create_cache(settings)
    assert isinstance(cache, TwoTierCache)
    await cache.start()
    made.append(cache)
    return cache


async def test_what_one_process_loads_another_reads_from_redis(
    deployment: tuple[Settings, list[TwoTierCache]],
) -> None:
    first, second = await process(deployment), await process(deployment)

    async def loader() -> tuple[Item, float | None]:
        return Item("shared", 7), None

    async def never() -> tuple[Item, float | None]:
        raise AssertionError("the second process should find it in Redis")

    redis_hits = lookups("test-items", "redis", "hit")
    assert await first.load(ITEMS, "k", loader) == Item("shared", 7)
    assert await second.load(ITEMS, "k", never) == Item("shared", 7)
    assert lookups("test-items", "redis", "hit") == redis_hits + 1


async def test_every_key_in_redis_has_a_ttl(
    deployment: tuple[Settings, list[TwoTierCache]],
) -> None:
    settings, _ = deployment
    cache = await process(deployment)
    await cache.put(ITEMS, "a", Item("a"))
    await cache.put(ITEMS, "b", Item("b"), ttl_s=5)
    client = Redis.from_url(REDIS_URL)
    try:
        prefix = f"{settings.redis_prefix}:cache:test-items:"
        ttl_a, ttl_b = await client.pttl(prefix + "a"), await client.pttl(prefix + "b")
    finally:
        await client.aclose()
    assert 0 < ttl_a <= settings.cache_ttl_s * 1000
    assert 0 < ttl_b <= 5000


async def test_an_invalidation_reaches_the_other_process_within_a_second(
    deployment: tuple[Settings, list[TwoTierCache]],
) -> None:
    first, second = await process(deployment), await process(deployment)
    await first.put(ITEMS, "a", Item("a"))
    assert await second.get(ITEMS, "a") == Item("a")  # now in the second's own tier too
    received = counted(
        "chatplane_cache_invalidations_total", cache="test-items", direction="received"
    )

    await first.invalidate(ITEMS, "a")

    await eventually(lambda: second.local.peek(ITEMS, "a") is None, timeout_s=1.0)
    assert await second.get(ITEMS, "a") is None  # gone from Redis too
    assert (
        counted("chatplane_cache_invalidations_total", cache="test-items", direction="received")
        >= received + 1
    )


async def test_invalidating_a_namespace_reaches_every_process(
    deployment: tuple[Settings, list[TwoTierCache]],
) -> None:
    first, second = await process(deployment), await process(deployment)
    for name in ("a", "b"):
        await first.put(ITEMS, name, Item(name))
        assert await second.get(ITEMS, name) == Item(name)

    await second.invalidate_all(ITEMS)

    def dropped() -> bool:
        return all(first.local.peek(ITEMS, name) is None for name in ("a", "b"))

    await eventually(dropped, timeout_s=1.0)
    assert await first.get(ITEMS, "a") is None
    assert await first.get(ITEMS, "b") is None


async def test_a_lost_subscription_clears_the_process_tier(
    deployment: tuple[Settings, list[TwoTierCache]],
) -> None:
    """Messages published while a process was not subscribed are lost: when it subscribes
    again it must not keep serving what it held."""
    cache = await process(deployment)
    cache.local.keep(ITEMS, "held", Item("held"), None)  # in this process only
    client = Redis.from_url(REDIS_URL)
    try:
        clients = await client.client_list(_type="pubsub")
        ours = [c["id"] for c in clients if c.get("name") == cache.listener.client_name]
        assert len(ours) == 1, clients
        await client.client_kill_filter(_id=ours[0])
    finally:
        await client.aclose()

    await eventually(lambda: cache.local.peek(ITEMS, "held") is None, timeout_s=5.0)
    await eventually(cache.listener.subscribed.is_set, timeout_s=5.0)


async def test_redis_down_falls_back_to_the_loader_and_counts_errors(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path,
        redis_url=f"redis://127.0.0.1:{free_port()}/0",  # nothing listens there
        redis_prefix=unique_prefix(),
    )
    cache = create_cache(settings)
    assert isinstance(cache, TwoTierCache)
    errors = counted("chatplane_cache_errors_total", op="get")
    reads: list[int] = []

    async def loader() -> tuple[Item, float | None]:
        reads.append(1)
        return Item("from the database"), None

    try:
        assert await cache.load(ITEMS, "a", loader) == Item("from the database")
        assert await cache.load(ITEMS, "a", loader) == Item("from the database")
        await cache.invalidate(ITEMS, "a")  # does not raise
        assert await cache.load(ITEMS, "a", loader) == Item("from the database")
    finally:
        await cache.close()
    assert reads == [1, 1]  # the in-process tier kept it until the invalidation
    assert counted("chatplane_cache_errors_total", op="get") >= errors + 1


async def test_an_entry_another_version_wrote_is_a_miss(
    deployment: tuple[Settings, list[TwoTierCache]],
) -> None:
    settings, _ = deployment
    cache = await process(deployment)
    client = Redis.from_url(REDIS_URL)
    try:
        key = f"{settings.redis_prefix}:cache:test-items:old"
        await client.set(key, orjson.dumps({"title": "another shape"}), px=60_000)
    finally:
        await client.aclose()

    async def loader() -> tuple[Item, float | None]:
        return Item("old", 2), None

    assert await cache.load(ITEMS, "old", loader) == Item("old", 2)
