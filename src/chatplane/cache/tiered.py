"""The two-tier cache of the scaled shape: the in-process tier in front of Redis.

A lookup tries the process first, then Redis (and keeps what it finds in the process for no
longer than Redis would), then the loader (the database), whose value goes to both tiers.
A Redis failure never reaches the caller: the lookup goes on to the loader."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import structlog

from chatplane.cache.local import LocalCache
from chatplane.cache.protocol import Listener, Namespace
from chatplane.cache.redis import CacheStoreDown, InvalidationListener, RedisTier
from chatplane.observability import metrics

V = TypeVar("V")

log = structlog.get_logger("chatplane.cache")

# How long start-up waits for the invalidation channel before going on without it.
SUBSCRIBE_WAIT_S = 2.0


class TwoTierCache:
    def __init__(self, local: LocalCache, remote: RedisTier, *, redis_url: str) -> None:
        self.local = local
        self.remote = remote
        self.listener = InvalidationListener(
            redis_url,
            remote.channel,
            origin=remote.origin,
            received=self._received,
            reconnected=local.drop_everything,
        )

    def _received(self, namespace: str, key: str | None, from_other: bool) -> None:
        if from_other:
            metrics.cache_invalidation(namespace, "received")
        self.local.drop(namespace, key)

    async def _remote_get(self, namespace: Namespace[V], key: str) -> V | None:
        """From Redis, kept in the process too unless the key was dropped meanwhile."""
        if not self.remote.available or self.remote.ttl_s <= 0:
            return None
        before = self.local.generation(namespace)
        try:
            found = await self.remote.get(namespace.name, key)
        except CacheStoreDown:
            return None
        if found is None:
            return None
        data, ttl_s = found
        try:
            value = namespace.load(data)
        except (KeyError, TypeError, ValueError):  # written by another version: a miss
            log.warning("cache_entry_unreadable", cache=namespace.name)
            return None
        if self.local.generation(namespace) == before:
            self.local.keep(namespace, key, value, ttl_s)
        return value

    async def _remote_put(
        self, namespace: Namespace[V], key: str, value: V, ttl_s: float | None
    ) -> None:
        if not self.remote.available:
            return
        try:
            await self.remote.put(namespace.name, key, namespace.dump(value), ttl_s)
        except CacheStoreDown:
            return

    async def get(self, namespace: Namespace[V], key: str) -> V | None:
        value = self.local.peek(namespace, key)
        if value is not None:
            return value
        return await self._remote_get(namespace, key)

    async def put(
        self, namespace: Namespace[V], key: str, value: V, *, ttl_s: float | None = None
    ) -> None:
        self.local.keep(namespace, key, value, ttl_s)
        await self._remote_put(namespace, key, value, ttl_s)

    async def load(
        self,
        namespace: Namespace[V],
        key: str,
        loader: Callable[[], Awaitable[tuple[V, float | None]]],
    ) -> V:
        value = self.local.peek(namespace, key)
        if value is not None:
            return value
        value = await self._remote_get(namespace, key)
        if value is not None:
            return value

        async def keep(value: V, ttl_s: float | None) -> None:
            await self.put(namespace, key, value, ttl_s=ttl_s)

        return await self.local.guarded_load(namespace, key, loader, keep)

    async def invalidate(self, namespace: Namespace[Any], key: str) -> None:
        metrics.cache_invalidation(namespace.name, "sent")
        self.local.drop(namespace.name, key)
        # Redis down: the other processes see the change within their in-process TTL.
        with contextlib.suppress(CacheStoreDown):
            await self.remote.invalidate(namespace.name, key)

    async def invalidate_all(self, namespace: Namespace[Any]) -> None:
        metrics.cache_invalidation(namespace.name, "sent")
        self.local.drop(namespace.name, None)
        with contextlib.suppress(CacheStoreDown):
            await self.remote.invalidate(namespace.name, None)

    def on_invalidate(self, namespace: Namespace[Any], listener: Listener) -> None:
        self.local.on_invalidate(namespace, listener)

    async def start(self) -> None:
        self.listener.start()
        if not await self.listener.wait_subscribed(SUBSCRIBE_WAIT_S):
            log.warning("cache_invalidations_not_subscribed_yet")

    async def close(self) -> None:
        await self.listener.close()
        await self.local.close()
        await self.remote.close()
