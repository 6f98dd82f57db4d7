"""The Redis side of the limit stores: the client they share, the connections their scripts
run on, how errors surface, and the fixed-window counters (one round trip per hit, exact
across replicas)."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator, Sequence
from typing import Any

from redis import exceptions as redis_errors
from redis.asyncio import BlockingConnectionPool, Redis

from chatplane.errors import ServiceUnavailable
from chatplane.limits.counters import WindowCount
from chatplane.redis_direct import DirectConnections

MAX_CONNECTIONS = 32

_UNAVAILABLE = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.ReadOnlyError,  # a replica during a failover
    OSError,
)

# INCR, open the window on the first hit, and report the time left, atomically.
HIT = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return {count, redis.call('PTTL', KEYS[1])}
"""


def connect(url: str, *, max_connections: int = MAX_CONNECTIONS) -> Redis:
    """The client the limit stores of one process share. The pool blocks: a burst waits
    for a free connection instead of failing."""
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=2,
        socket_connect_timeout=2,
        socket_timeout=2,
    )
    return Redis.from_pool(pool)


class ScriptRunner:
    """Runs the stores' Lua scripts, one `EVALSHA` per call, on connections it keeps (one
    per call in flight, at most `max_connections`: `DirectConnections`), bounded by the
    client's socket time-out. A script Redis no longer has (restarted, flushed) is loaded
    again by `EVAL` on the same call."""

    def __init__(self, client: Redis, *, max_connections: int = MAX_CONNECTIONS) -> None:
        self.client = client
        self._connections = DirectConnections(client, max_connections=max_connections)

    def register(self, source: str) -> LimitScript:
        return LimitScript(self, source)

    async def run(self, script: LimitScript, keys: Sequence[str], args: Sequence[Any]) -> Any:
        try:
            return await self._connections.call(("EVALSHA", script.sha, len(keys), *keys, *args))
        except redis_errors.NoScriptError:
            return await self._connections.call(("EVAL", script.source, len(keys), *keys, *args))

    async def close(self) -> None:
        await self._connections.close()


class LimitScript:
    """A Lua script run by a `ScriptRunner`: `await script(keys, args)`."""

    __slots__ = ("_runner", "sha", "source")

    def __init__(self, runner: ScriptRunner, source: str) -> None:
        self._runner = runner
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()

    async def __call__(self, *, keys: Sequence[str], args: Sequence[Any] = ()) -> Any:
        return await self._runner.run(self, keys, args)


@contextlib.contextmanager
def store_errors() -> Iterator[None]:
    """Connection trouble as `ServiceUnavailable` (a 503), everything else as it is."""
    try:
        yield
    except _UNAVAILABLE as exc:
        raise ServiceUnavailable("The limit store (Redis) is unreachable") from exc


class RedisWindowCounter:
    """Counts on `client`, which it closes only when it made it (`from_url`)."""

    def __init__(self, client: Redis, *, key_prefix: str, owns_client: bool = False) -> None:
        self._client = client
        self._owns_client = owns_client
        self._prefix = f"{key_prefix}:limits:"
        self._hit = client.register_script(HIT)

    @classmethod
    def from_url(cls, url: str, *, key_prefix: str) -> RedisWindowCounter:
        return cls(connect(url, max_connections=20), key_prefix=key_prefix, owns_client=True)

    def _key(self, key: str) -> str:
        return f"{self._prefix}{{{key}}}"

    async def hit(self, key: str, *, window_s: float) -> WindowCount:
        with store_errors():
            count, pttl = await self._hit(keys=[self._key(key)], args=[int(window_s * 1000)])
        return WindowCount(int(count), max(0, int(pttl)) / 1000)

    async def peek(self, key: str) -> WindowCount:
        with store_errors():
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.get(self._key(key))
                pipe.pttl(self._key(key))
                raw, pttl = await pipe.execute()
        if raw is None:
            return WindowCount(0, 0.0)
        return WindowCount(int(raw), max(0, int(pttl)) / 1000)

    async def reset(self, key: str) -> None:
        with store_errors():
            await self._client.delete(self._key(key))

    async def close(self) -> None:
        if self._owns_client:
            await self._client.aclose()
