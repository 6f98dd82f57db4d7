"""Fixed-window counters on Redis: one round trip per hit, exact across replicas."""

from __future__ import annotations

from redis import exceptions as redis_errors
from redis.asyncio import BlockingConnectionPool, Redis

from chatplane.errors import ServiceUnavailable
from chatplane.limits.counters import WindowCount

# INCR, open the window on the first hit, and report the time left, atomically.
HIT = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return {count, redis.call('PTTL', KEYS[1])}
"""


class RedisWindowCounter:
    def __init__(self, url: str, *, key_prefix: str) -> None:
        # A blocking pool: a burst waits for a free connection instead of failing.
        pool = BlockingConnectionPool.from_url(
            url, max_connections=20, timeout=2, socket_connect_timeout=2, socket_timeout=2
        )
        self._client = Redis.from_pool(pool)
        self._prefix = f"{key_prefix}:limits:"
        self._hit = self._client.register_script(HIT)

    def _key(self, key: str) -> str:
        return f"{self._prefix}{{{key}}}"

    async def hit(self, key: str, *, window_s: float) -> WindowCount:
        try:
            count, pttl = await self._hit(keys=[self._key(key)], args=[int(window_s * 1000)])
        except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError) as exc:
            raise ServiceUnavailable("The limit store (Redis) is unreachable") from exc
        return WindowCount(int(count), max(0, int(pttl)) / 1000)

    async def peek(self, key: str) -> WindowCount:
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.get(self._key(key))
                pipe.pttl(self._key(key))
                raw, pttl = await pipe.execute()
        except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError) as exc:
            raise ServiceUnavailable("The limit store (Redis) is unreachable") from exc
        if raw is None:
            return WindowCount(0, 0.0)
        return WindowCount(int(raw), max(0, int(pttl)) / 1000)

    async def reset(self, key: str) -> None:
        try:
            await self._client.delete(self._key(key))
        except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError) as exc:
            raise ServiceUnavailable("The limit store (Redis) is unreachable") from exc

    async def close(self) -> None:
        await self._client.aclose()
