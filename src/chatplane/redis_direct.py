"""Redis commands on the hot paths, sent on connections kept for them instead of through a
client's pool and command layers.

redis-py's client spends about as much CPU per command as the round trip itself: the pool's
checkout and release, the retry wrapper, its own bookkeeping, and (with a socket time-out,
on Python 3.11) a task per write. `DirectConnections` keeps at most `max_connections`
connections made like the client's own (same URL, TLS, credentials), packs commands with
hiredis, and bounds each call with one `asyncio.timeout` (the client's socket time-out).
There are no retries: a connection that fails or times out is dropped and the error
surfaces; one the server closed while it sat idle (a restart) is replaced before it is used.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from hiredis import pack_command
from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection

Command = Sequence[str | bytes | int | float]


class DirectConnections:
    def __init__(
        self, client: Redis, *, max_connections: int, timeout_s: float | None = None
    ) -> None:
        pool = client.connection_pool
        if timeout_s is None:
            timeout_s = pool.connection_kwargs.get("socket_timeout")
        self.timeout_s = timeout_s
        self._connection_class = pool.connection_class
        # The time-out is taken once around each call, not per write and per read; health
        # checks are the idle check in `_checkout`.
        self._connection_kwargs = {
            **pool.connection_kwargs,
            "socket_timeout": None,
            "health_check_interval": 0,
        }
        self._room = asyncio.Semaphore(max_connections)
        self._idle: list[AbstractConnection] = []
        self._open: set[AbstractConnection] = set()

    async def call(self, command: Command, *, timeout_s: float | None = None) -> Any:
        """One command's reply; an error reply raises (`ResponseError` and its kinds)."""
        [reply] = await self._exchange([command], timeout_s)
        if isinstance(reply, redis_errors.ResponseError):
            raise reply
        return reply

    async def pipeline(
        self, commands: Sequence[Command], *, raise_on_error: bool = False
    ) -> list[Any]:
        """Every command's reply, in order, from one write: an error reply is returned as
        its exception, and the others stand (not a transaction); with `raise_on_error` the
        first error reply is raised once every reply is read."""
        replies = await self._exchange(commands, None)
        if raise_on_error:
            for reply in replies:
                if isinstance(reply, redis_errors.ResponseError):
                    raise reply
        return replies

    async def close(self) -> None:
        connections, self._open = self._open, set()
        self._idle.clear()
        for connection in connections:
            await connection.disconnect()

    async def _exchange(self, commands: Sequence[Command], timeout_s: float | None) -> list[Any]:
        async with self._room:
            connection = await self._checkout()
            try:
                async with asyncio.timeout(timeout_s or self.timeout_s):
                    packed = b"".join(_pack(command) for command in commands)
                    await connection.send_packed_command(packed, check_health=False)
                    replies = [await _reply(connection) for _ in commands]
            except TimeoutError as exc:
                await self._drop(connection)
                raise redis_errors.TimeoutError("Timeout waiting for Redis") from exc
            except BaseException:
                await self._drop(connection)
                raise
            self._idle.append(connection)
            return replies

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


def _pack(command: Command) -> bytes:
    # hiredis's stub types the command as a 1-tuple; it takes any number of arguments.
    packed: bytes = pack_command(tuple(command))  # type: ignore[arg-type]
    return packed


async def _reply(connection: AbstractConnection) -> Any:
    try:
        return await connection.read_response()
    except redis_errors.ResponseError as exc:  # an error reply: the connection is fine
        return exc
