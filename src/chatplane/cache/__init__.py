"""The cache of what hot paths read on every request (see `chatplane.cache.protocol`).

`create_cache` picks it from the settings: the in-process tier alone in the embedded shape,
the in-process tier in front of Redis (with invalidation across processes) when
`redis_url` is set."""

from __future__ import annotations

from chatplane.cache.local import LocalCache, TTLCache
from chatplane.cache.protocol import Cache, Listener, Namespace, not_shared
from chatplane.settings import Settings


def create_cache(settings: Settings) -> Cache:
    local = LocalCache(ttl_s=settings.cache_local_ttl_s, max_items=settings.cache_max_items)
    if not settings.redis_url:
        return local
    # redis-py costs some MB of memory: the embedded shape never loads it.
    from chatplane.cache.redis import RedisTier, connect
    from chatplane.cache.tiered import TwoTierCache

    remote = RedisTier(
        connect(settings.redis_url),
        key_prefix=settings.redis_prefix,
        ttl_s=settings.cache_ttl_s if settings.cache_max_items > 0 else 0.0,
    )
    return TwoTierCache(local, remote, redis_url=settings.redis_url)


__all__ = [
    "Cache",
    "Listener",
    "LocalCache",
    "Namespace",
    "TTLCache",
    "create_cache",
    "not_shared",
]
