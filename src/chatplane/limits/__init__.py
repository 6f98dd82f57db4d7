"""Counters and limits: in-process in the embedded shape, Redis (exact across replicas) in
the scaled one. `create_limit_stores` picks them from the settings."""

from __future__ import annotations

from chatplane.limits.counters import MemoryWindowCounter, WindowCounter
from chatplane.limits.stores import LimitStores, memory_limit_stores
from chatplane.settings import Settings


def create_limit_stores(settings: Settings) -> LimitStores:
    """Redis when `redis_url` is set (one client for all four stores), else in-process."""
    if settings.redis_url:
        # redis-py costs some MB of memory: the embedded shape never loads it.
        from chatplane.limits.redis_stores import redis_limit_stores

        return redis_limit_stores(settings.redis_url, key_prefix=settings.redis_prefix)
    return memory_limit_stores()


def create_window_counter(settings: Settings) -> WindowCounter:
    """A counter on a client of its own; `create_limit_stores(...).counter` shares one."""
    if settings.redis_url:
        from chatplane.limits.redis import RedisWindowCounter

        return RedisWindowCounter.from_url(settings.redis_url, key_prefix=settings.redis_prefix)
    return MemoryWindowCounter()


__all__ = [
    "LimitStores",
    "MemoryWindowCounter",
    "WindowCounter",
    "create_limit_stores",
    "create_window_counter",
]
