"""The in-process tier: an LRU with a TTL per namespace (the whole cache in the embedded
shape, the front tier in the scaled one)."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import structlog

from chatplane.cache.protocol import Listener, Namespace
from chatplane.observability import metrics

K = TypeVar("K")
V = TypeVar("V")
T = TypeVar("T")

log = structlog.get_logger("chatplane.cache")


class TTLCache(Generic[K, V]):
    """Least recently used entries go first once `max_items` are kept; each expires after
    `ttl_s` (or its own, shorter TTL). `max_items=0` keeps nothing."""

    def __init__(self, *, ttl_s: float, max_items: int = 10_000) -> None:
        self._ttl = ttl_s
        self._max = max_items
        self._items: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: K) -> V | None:
        item = self._items.get(key)
        if item is None:
            return None
        expires, value = item
        if expires < time.monotonic():
            del self._items[key]
            return None
        self._items.move_to_end(key)
        return value

    def put(self, key: K, value: V, *, ttl_s: float | None = None) -> None:
        if self._max <= 0:
            return
        ttl = self._ttl if ttl_s is None else min(ttl_s, self._ttl)
        self._items[key] = (time.monotonic() + ttl, value)
        self._items.move_to_end(key)
        while len(self._items) > self._max:
            self._items.popitem(last=False)

    def pop(self, key: K) -> None:
        self._items.pop(key, None)

    def clear(self) -> None:
        self._items.clear()


class LocalCache:
    """`Cache` in one process: invalidation reaches this process only (the embedded shape
    has no other). `TwoTierCache` uses it as its front tier."""

    def __init__(self, *, ttl_s: float, max_items: int) -> None:
        self.ttl_s = ttl_s
        self.max_items = max_items
        self._entries: dict[str, TTLCache[str, Any]] = {}
        self._generations: dict[str, int] = {}
        self._listeners: dict[str, list[Listener]] = {}
        self._lookups: dict[str, tuple[Any, Any]] = {}

    def _tier(self, namespace: Namespace[Any]) -> TTLCache[str, Any]:
        tier = self._entries.get(namespace.name)
        if tier is None:
            tier = self._entries[namespace.name] = TTLCache(
                ttl_s=self.ttl_s, max_items=self.max_items
            )
            self._lookups[namespace.name] = metrics.cache_lookup_counters(namespace.name, "local")
        return tier

    # The tier's own steps (also used by TwoTierCache).

    def peek(self, namespace: Namespace[V], key: str) -> V | None:
        value: V | None = self._tier(namespace).get(key)
        hit, miss = self._lookups[namespace.name]
        (miss if value is None else hit).inc()
        return value

    def keep(self, namespace: Namespace[V], key: str, value: V, ttl_s: float | None) -> None:
        self._tier(namespace).put(key, value, ttl_s=ttl_s)

    def generation(self, namespace: Namespace[Any]) -> int:
        return self._generations.get(namespace.name, 0)

    def drop(self, name: str, key: str | None) -> None:
        """Forget a key (None: the namespace) and tell the namespace's listeners."""
        tier = self._entries.get(name)
        if tier is not None:
            if key is None:
                tier.clear()
            else:
                tier.pop(key)
        self._generations[name] = self._generations.get(name, 0) + 1
        for listener in self._listeners.get(name, ()):
            try:
                listener(key)
            except Exception:  # one listener's bug must not stop the others
                log.exception("cache_listener_failed", cache=name)

    def drop_everything(self) -> None:
        for name in {*self._entries, *self._listeners}:
            self.drop(name, None)

    async def guarded_load(
        self,
        namespace: Namespace[V],
        key: str,
        loader: Callable[[], Awaitable[tuple[V, float | None]]],
        keep: Callable[[V, float | None], Awaitable[None]],
    ) -> V:
        """Run `loader`, then `keep` its value unless the namespace was invalidated
        meanwhile (the value read may predate the change)."""
        before = self.generation(namespace)
        value, ttl_s = await loader()
        if self.generation(namespace) == before:
            await keep(value, ttl_s)
        return value

    # Cache.

    async def get(self, namespace: Namespace[V], key: str) -> V | None:
        return self.peek(namespace, key)

    async def put(
        self, namespace: Namespace[V], key: str, value: V, *, ttl_s: float | None = None
    ) -> None:
        self.keep(namespace, key, value, ttl_s)

    async def load(
        self,
        namespace: Namespace[V],
        key: str,
        loader: Callable[[], Awaitable[tuple[V, float | None]]],
    ) -> V:
        cached = self.peek(namespace, key)
        if cached is not None:
            return cached

        async def keep(value: V, ttl_s: float | None) -> None:
            self.keep(namespace, key, value, ttl_s)

        return await self.guarded_load(namespace, key, loader, keep)

    async def invalidate(self, namespace: Namespace[Any], key: str) -> None:
        metrics.cache_invalidation(namespace.name, "sent")
        self.drop(namespace.name, key)

    async def invalidate_all(self, namespace: Namespace[Any]) -> None:
        metrics.cache_invalidation(namespace.name, "sent")
        self.drop(namespace.name, None)

    def on_invalidate(self, namespace: Namespace[Any], listener: Listener) -> None:
        self._listeners.setdefault(namespace.name, []).append(listener)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        for tier in self._entries.values():
            tier.clear()
