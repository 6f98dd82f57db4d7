"""Counters and limits: in-process in the embedded shape, Redis (exact across replicas) in
the scaled one."""

from __future__ import annotations

from chatplane.limits.counters import MemoryWindowCounter, WindowCounter
from chatplane.settings import Settings


def create_window_counter(settings: Settings) -> WindowCounter:
    if settings.redis_url:
        from chatplane.limits.redis import RedisWindowCounter

        return RedisWindowCounter(settings.redis_url, key_prefix=settings.redis_prefix)
    return MemoryWindowCounter()


__all__ = ["MemoryWindowCounter", "WindowCounter", "create_window_counter"]
