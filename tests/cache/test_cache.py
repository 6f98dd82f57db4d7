"""The cache protocol, one suite for every implementation: in-process, and in-process in
front of Redis."""

from __future__ import annotations

import pytest

from chatplane.cache import Cache
from chatplane.errors import Unauthorized
from tests.broker.support import eventually
from tests.cache.support import ITEMS, Item, lookups


async def test_a_miss_then_what_was_put(cache: Cache) -> None:
    assert await cache.get(ITEMS, "a") is None
    await cache.put(ITEMS, "a", Item("a"))
    assert await cache.get(ITEMS, "a") == Item("a")
    assert await cache.get(ITEMS, "b") is None


async def test_load_reads_once_then_serves_from_the_cache(cache: Cache) -> None:
    reads: list[str] = []

    async def loader() -> tuple[Item, float | None]:
        reads.append("a")
        return Item("a", len(reads)), None

    assert await cache.load(ITEMS, "a", loader) == Item("a", 1)
    assert await cache.load(ITEMS, "a", loader) == Item("a", 1)
    assert reads == ["a"]


async def test_a_failed_load_is_not_kept(cache: Cache) -> None:
    async def refuse() -> tuple[Item, float | None]:
        raise Unauthorized("no such key", code="invalid_api_key")

    async def accept() -> tuple[Item, float | None]:
        return Item("a"), None

    with pytest.raises(Unauthorized):
        await cache.load(ITEMS, "a", refuse)
    assert await cache.load(ITEMS, "a", accept) == Item("a")


async def test_an_entry_lives_no_longer_than_its_own_ttl(cache: Cache) -> None:
    await cache.put(ITEMS, "short", Item("short"), ttl_s=0.05)
    await cache.put(ITEMS, "long", Item("long"))

    async def short_gone() -> bool:
        return await cache.get(ITEMS, "short") is None

    await eventually(short_gone, timeout_s=5)
    assert await cache.get(ITEMS, "long") == Item("long")


async def test_invalidate_drops_one_key_and_tells_listeners(cache: Cache) -> None:
    heard: list[str | None] = []
    cache.on_invalidate(ITEMS, heard.append)
    await cache.put(ITEMS, "a", Item("a"))
    await cache.put(ITEMS, "b", Item("b"))

    await cache.invalidate(ITEMS, "a")

    assert await cache.get(ITEMS, "a") is None
    assert await cache.get(ITEMS, "b") == Item("b")
    assert "a" in heard
    assert "b" not in heard


async def test_invalidate_all_drops_the_namespace(cache: Cache) -> None:
    heard: list[str | None] = []
    cache.on_invalidate(ITEMS, heard.append)
    for name in ("a", "b", "c"):
        await cache.put(ITEMS, name, Item(name))

    await cache.invalidate_all(ITEMS)

    for name in ("a", "b", "c"):
        assert await cache.get(ITEMS, name) is None
    assert None in heard


async def test_a_load_overtaken_by_an_invalidation_is_returned_but_not_kept(
    cache: Cache,
) -> None:
    """The value read before a change must not outlive the change's invalidation."""

    async def read_then_changed() -> tuple[Item, float | None]:
        value = Item("a", 1)
        await cache.invalidate(ITEMS, "a")  # the change lands while the read is in flight
        return value, None

    async def read_again() -> tuple[Item, float | None]:
        return Item("a", 2), None

    assert await cache.load(ITEMS, "a", read_then_changed) == Item("a", 1)
    assert await cache.load(ITEMS, "a", read_again) == Item("a", 2)


async def test_lookups_are_counted_as_hits_and_misses(cache: Cache) -> None:
    hits, misses = lookups("test-items", "local", "hit"), lookups("test-items", "local", "miss")
    await cache.get(ITEMS, "counted")
    await cache.put(ITEMS, "counted", Item("counted"))
    await cache.get(ITEMS, "counted")
    await cache.get(ITEMS, "counted")

    assert lookups("test-items", "local", "miss") == misses + 1
    assert lookups("test-items", "local", "hit") == hits + 2
