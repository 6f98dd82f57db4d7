"""What only the Redis broker has: the factory's choice, its key layout, and how it behaves
while Redis is away and once it is back."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from redis.asyncio import Redis
from redis.crc import key_slot
from redis.exceptions import ResponseError

from chatplane.broker import MemoryBroker, RedisBroker, create_broker
from chatplane.errors import ServiceUnavailable
from chatplane.settings import Settings

from .support import REDIS_URL, delete_keys, eventually, require_redis, unique_name, unique_prefix


class TcpProxy:
    """Forwards a local port to Redis; `stop()` is an outage, `start()` the recovery."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, client: asyncio.StreamWriter) -> None:
        self._writers.add(client)
        try:
            upstream_reader, upstream = await asyncio.open_connection(*self.target)
        except OSError:
            client.transport.abort()
            self._writers.discard(client)
            return
        self._writers.add(upstream)
        if self._server is None:  # stopped while this connection was being set up
            upstream.transport.abort()
            client.transport.abort()
        try:
            await asyncio.gather(self._pipe(reader, upstream), self._pipe(upstream_reader, client))
        finally:
            self._writers -= {client, upstream}

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.transport.abort()


@pytest.fixture
async def proxy() -> AsyncIterator[TcpProxy]:
    await require_redis()
    target = urlsplit(REDIS_URL)
    running = TcpProxy(target.hostname or "127.0.0.1", target.port or 6379)
    await running.start()
    yield running
    await running.stop()


async def test_factory_picks_the_broker_from_settings(tmp_path: Path) -> None:
    embedded = create_broker(
        Settings(data_dir=tmp_path, redis_url=None, job_visibility_timeout_s=7)
    )
    assert isinstance(embedded, MemoryBroker)
    assert embedded.visibility_timeout_s == 7

    scaled = create_broker(
        Settings(data_dir=tmp_path, redis_url=REDIS_URL, turn_max_attempts=5), key_prefix="t"
    )
    assert isinstance(scaled, RedisBroker)
    assert (scaled.key_prefix, scaled.max_attempts, scaled.url) == ("t", 5, REDIS_URL)
    default = create_broker(Settings(data_dir=tmp_path, redis_url=REDIS_URL))
    assert isinstance(default, RedisBroker)
    assert default.key_prefix == "chatplane"


async def test_keys_carry_the_prefix_and_a_hash_tag_per_turn() -> None:
    await require_redis()
    prefix = unique_prefix()
    broker = RedisBroker(REDIS_URL, key_prefix=prefix)
    admin = Redis.from_url(REDIS_URL, decode_responses=True)
    turn = unique_name()
    try:
        await broker.enqueue("turn", {"turn_id": turn})
        await broker.publish(turn, "turn.queued", {})
        await broker.request_cancel(turn)
        keys = {key async for key in admin.scan_iter(match=f"{prefix}:*")}
    finally:
        await broker.close()
        await admin.aclose()
        await delete_keys(prefix)
    events, cancel = f"{prefix}:turn:{{{turn}}}:events", f"{prefix}:turn:{{{turn}}}:cancel"
    assert keys == {f"{prefix}:{{jobs}}:queue", events, cancel}
    assert key_slot(events.encode()) == key_slot(cancel.encode()) == key_slot(turn.encode())


async def test_a_publish_redis_refuses_fails_alone_in_its_batch() -> None:
    """Publishes sent together in one pipeline: one whose key is not a stream fails with
    Redis's error, the others are stored."""
    await require_redis()
    prefix = unique_prefix()
    broker = RedisBroker(REDIS_URL, key_prefix=prefix)
    admin = Redis.from_url(REDIS_URL, decode_responses=True)
    broken, fine = unique_name(), [unique_name() for _ in range(10)]
    try:
        await admin.set(f"{prefix}:turn:{{{broken}}}:events", "not a stream")
        # The first goes alone; the rest, the refused one among them, wait and go together.
        streams = [fine[0], broken, *fine[1:]]
        outcomes = await asyncio.gather(
            *(broker.publish(stream, "message.delta", {"s": stream}) for stream in streams),
            return_exceptions=True,
        )
        stored = [await broker.read(stream, None, timeout_s=0) for stream in fine]
    finally:
        await broker.close()
        await admin.aclose()
        await delete_keys(prefix)
    assert isinstance(outcomes[1], ResponseError)
    assert stored == [[outcome] for outcome in [outcomes[0], *outcomes[2:]]]


async def test_unreachable_redis_is_service_unavailable_without_leaking_the_password() -> None:
    broker = RedisBroker("redis://:s3cret@127.0.0.1:1/0")
    await broker.start()  # no I/O: a process starts while Redis is down
    try:
        calls: list[Callable[[], Awaitable[object]]] = [
            broker.ping,
            lambda: broker.publish("t", "turn.queued", {}),
            lambda: broker.read("t", None, timeout_s=1),
            lambda: broker.enqueue("turn", {}),
            lambda: broker.claim("w1", timeout_s=1),
        ]
        for call in calls:
            with pytest.raises(ServiceUnavailable) as caught:
                await call()
            assert "127.0.0.1:1" in str(caught.value)
            assert "s3cret" not in str(caught.value)
    finally:
        await broker.close()


async def test_broker_recovers_when_redis_comes_back(proxy: TcpProxy) -> None:
    prefix = unique_prefix()
    broker = RedisBroker(f"redis://127.0.0.1:{proxy.port}/0", key_prefix=prefix)
    stream = unique_name()
    try:
        first = await broker.publish(stream, "turn.queued", {})
        reader = asyncio.create_task(broker.read(stream, first.id, timeout_s=30))
        await eventually(lambda: broker.pending_reads == 1)

        await proxy.stop()
        with pytest.raises(ServiceUnavailable):
            await reader  # the waiting reader hears about the outage at once
        with pytest.raises(ServiceUnavailable):
            await broker.ping()

        await proxy.start()

        async def answers() -> bool:
            with contextlib.suppress(ServiceUnavailable):
                await broker.ping()
                return True
            return False

        await eventually(answers, timeout_s=10)
        reader = asyncio.create_task(broker.read(stream, first.id, timeout_s=30))
        await eventually(lambda: broker.pending_reads == 1)
        second = await broker.publish(stream, "message.delta", {"text": "back"})
        async with asyncio.timeout(10):
            assert await reader == [second]
        job_id = await broker.enqueue("turn", {"n": 1})
        job = await broker.claim("w1", timeout_s=5)
        assert job is not None
        assert job.id == job_id
    finally:
        await broker.close()
        await delete_keys(prefix)


async def test_job_queue_comes_back_after_redis_loses_it() -> None:
    await require_redis()
    prefix = unique_prefix()
    broker = RedisBroker(REDIS_URL, key_prefix=prefix, visibility_timeout_s=0.3)
    try:
        await broker.enqueue("turn", {"n": 1})
        assert await broker.claim("w1", timeout_s=2) is not None
        await delete_keys(prefix)  # as after a restart without persistence

        job_id = await broker.enqueue("turn", {"n": 2})
        job = await broker.claim("w1", timeout_s=2)
        assert job is not None
        assert (job.id, job.attempt) == (job_id, 1)
    finally:
        await broker.close()
        await delete_keys(prefix)
