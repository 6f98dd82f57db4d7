"""Where the gateway keeps cached answers: in this process (an LRU with a TTL and a cap on
its total bytes) or in Redis (shared by every replica; one key per answer with an expiry).

A store holds opaque bytes under a key that already names the tenant (see
`chatplane.gateway.caching`). It never fails a request: a Redis error is a miss (or an
answer not kept), logged and counted."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Protocol

import structlog

from chatplane.observability import metrics
from chatplane.settings import Settings

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = structlog.get_logger("chatplane.gateway.cache")

# A cache that answers slower than this is worse than no cache: give up, call upstream.
REDIS_TIMEOUT_S = 0.25
REDIS_MAX_CONNECTIONS = 16


class ResponseCacheStore(Protocol):
    max_entry_bytes: int

    async def get(self, key: str) -> bytes | None:
        """The entry, or None (absent, expired, or the store did not answer)."""
        ...

    async def put(self, key: str, value: bytes) -> bool:
        """Keep `value` for the store's TTL; False when it was not kept (too large, or the
        store did not answer)."""
        ...

    async def close(self) -> None: ...


class MemoryResponseCache:
    """Least recently used entries go first once the total passes `max_bytes`."""

    def __init__(
        self,
        *,
        ttl_s: float,
        max_bytes: int,
        max_entry_bytes: int,
    ) -> None:
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self.max_entry_bytes = min(max_entry_bytes, max_bytes)
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self.size_bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, value = entry
        if expires <= time.monotonic():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return value

    async def put(self, key: str, value: bytes) -> bool:
        if len(value) > self.max_entry_bytes:
            return False
        self._drop(key)
        self._entries[key] = (time.monotonic() + self.ttl_s, value)
        self.size_bytes += len(value)
        while self.size_bytes > self.max_bytes:
            oldest = next(iter(self._entries))
            self._drop(oldest)
        return True

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.size_bytes -= len(entry[1])

    async def close(self) -> None:
        self._entries.clear()
        self.size_bytes = 0


class RedisResponseCache:
    """`SET key value PX ttl` under `<prefix>:respcache:`; Redis's own memory policy bounds
    the total, this store bounds each entry."""

    def __init__(
        self,
        client: Redis,
        *,
        key_prefix: str,
        ttl_s: float,
        max_entry_bytes: int,
        timeout_s: float = REDIS_TIMEOUT_S,
    ) -> None:
        # redis-py is loaded only by the Redis stores: the embedded shape never pays for it.
        from redis import exceptions as redis_errors

        self._failures = (redis_errors.RedisError, OSError, TimeoutError)
        self._client = client
        self._prefix = f"{key_prefix}:respcache:"
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.max_entry_bytes = max_entry_bytes
        self._timeout_s = timeout_s

    @classmethod
    def from_url(
        cls, url: str, *, key_prefix: str, ttl_s: float, max_entry_bytes: int
    ) -> RedisResponseCache:
        from redis.asyncio import BlockingConnectionPool, Redis

        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=REDIS_MAX_CONNECTIONS,
            timeout=REDIS_TIMEOUT_S,
            socket_connect_timeout=REDIS_TIMEOUT_S,
            socket_timeout=REDIS_TIMEOUT_S,
        )
        return cls(
            Redis.from_pool(pool),
            key_prefix=key_prefix,
            ttl_s=ttl_s,
            max_entry_bytes=max_entry_bytes,
        )

    async def get(self, key: str) -> bytes | None:
        try:
            async with asyncio.timeout(self._timeout_s):
                value = await self._client.get(self._prefix + key)
        except self._failures as exc:
            _failed("get", exc)
            return None
        return value if isinstance(value, bytes) else None

    async def put(self, key: str, value: bytes) -> bool:
        if len(value) > self.max_entry_bytes:
            return False
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._client.set(self._prefix + key, value, px=self.ttl_ms)
        except self._failures as exc:
            _failed("put", exc)
            return False
        return True

    async def close(self) -> None:
        await self._client.aclose()


def _failed(operation: str, exc: BaseException) -> None:
    log.warning("response_cache_unavailable", operation=operation, error=type(exc).__name__)
    metrics.redis_error("response_cache")
    metrics.response_cache("error")


def create_response_cache(settings: Settings) -> ResponseCacheStore:
    """Redis when the deployment has one (every replica sees the same answers), else this
    process's memory."""
    ttl_s = float(settings.response_cache_ttl_s)
    max_entry_bytes = settings.response_cache_max_entry_kb * 1024
    if settings.redis_url:
        return RedisResponseCache.from_url(
            settings.redis_url,
            key_prefix=settings.redis_prefix,
            ttl_s=ttl_s,
            max_entry_bytes=max_entry_bytes,
        )
    return MemoryResponseCache(
        ttl_s=ttl_s,
        max_bytes=int(settings.response_cache_max_mb * 1024 * 1024),
        max_entry_bytes=max_entry_bytes,
    )


__all__ = [
    "MemoryResponseCache",
    "RedisResponseCache",
    "ResponseCacheStore",
    "create_response_cache",
]
