"""The Redis side of the limit stores: the client they share, the connections their scripts
run on, how errors surface, and the fixed-window counters (one round trip per hit, exact
across replicas)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Iterator, Sequence
from typing import Any

from hiredis import pack_command
from redis import exceptions as redis_errors
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection

from chatplane.errors import ServiceUnavailable
from chatplane.limits.counters import WindowCount

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
    """Runs the stores' Lua scripts, one `EVALSHA` per call, on connections it keeps: one per
    call in flight, at most `max_connections`, made like the client's own (same URL, TLS,
    credentials). A call takes an idle one off a list instead of going through the client's
    pool and command layers, whose checkout, release, bookkeeping and per-write task cost
    about as much CPU as the round trip itself; one `asyncio.timeout` (the client's socket
    time-out) bounds the whole call. There are no retries, as on the client: a connection that
    fails or times out is dropped and the error surfaces (`store_errors`); one the server
    closed while it sat idle (a restart) is replaced before it is used."""

    def __init__(self, client: Redis, *, max_connections: int = MAX_CONNECTIONS) -> None:
        self.client = client
        pool = client.connection_pool
        self._timeout_s: float | None = pool.connection_kwargs.get("socket_timeout")
        self._connection_class = pool.connection_class
        # The time-out is taken once around each call (`run`), not per write and per read.
        self._connection_kwargs = {**pool.connection_kwargs, "socket_timeout": None}
        self._room = asyncio.Semaphore(max_connections)
        self._idle: list[AbstractConnection] = []
        self._open: set[AbstractConnection] = set()

    def register(self, source: str) -> LimitScript:
        return LimitScript(self, source)

    async def run(self, script: LimitScript, keys: Sequence[str], args: Sequence[Any]) -> Any:
        async with self._room:
            connection = await self._checkout()
            try:
                async with asyncio.timeout(self._timeout_s):
                    reply = await _evalsha(connection, script, keys, args)
            except redis_errors.ResponseError:  # an error reply: the connection is fine
                self._idle.append(connection)
                raise
            except TimeoutError as exc:
                await self._drop(connection)
                raise redis_errors.TimeoutError("Timeout running a limit script") from exc
            except BaseException:
                await self._drop(connection)
                raise
            self._idle.append(connection)
            return reply

    async def close(self) -> None:
        connections, self._open = self._open, set()
        self._idle.clear()
        for connection in connections:
            await connection.disconnect()

    async def _checkout(self) -> AbstractConnection:
        while self._idle:
            connection = self._idle.pop()
            reader = connection._reader  # EOF here: the server closed it while it sat idle
            if reader is None or not reader.at_eof():
                return connection  # (a disconnected one connects on its first command)
            await self._drop(connection)
        connection = self._connection_class(**self._connection_kwargs)
        self._open.add(connection)
        return connection

    async def _drop(self, connection: AbstractConnection) -> None:
        self._open.discard(connection)
        await connection.disconnect(nowait=True)


async def _evalsha(
    connection: AbstractConnection, script: LimitScript, keys: Sequence[str], args: Sequence[Any]
) -> Any:
    # hiredis packs the command in C; redis-py's asyncio connection would do it in Python.
    try:
        await connection.send_packed_command(
            pack_command(("EVALSHA", script.sha, len(keys), *keys, *args))
        )
        return await connection.read_response()
    except redis_errors.NoScriptError:  # Redis restarted or flushed its scripts: EVAL loads it
        await connection.send_packed_command(
            pack_command(("EVAL", script.source, len(keys), *keys, *args))
        )
        return await connection.read_response()


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
