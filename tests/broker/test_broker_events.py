"""Turn event streams, cancel flags and shutdown, on every broker."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from chatplane.broker import Event, RedisBroker
from chatplane.errors import BadRequest, ServiceUnavailable

from .support import REDIS_URL, AnyBroker, BrokerFactory, eventually, unique_name


def order(event_id: str) -> tuple[int, ...]:
    """Both brokers' ids ("17", "1712345678901-3") compare as tuples of integers."""
    return tuple(int(part) for part in event_id.split("-"))


async def publish_many(broker: AnyBroker, stream: str, count: int) -> list[Event]:
    return [await broker.publish(stream, "message.delta", {"text": f"w{n} "}) for n in range(count)]


async def test_ids_increase_and_reading_from_the_start_gets_all(broker: AnyBroker) -> None:
    stream = unique_name()
    published = await publish_many(broker, stream, 5)

    ids = [event.id for event in published]
    assert [order(i) for i in ids] == sorted(order(i) for i in ids)
    assert len(set(ids)) == 5
    assert published[0].data == {"text": "w0 "}
    assert await broker.read(stream, None, timeout_s=1) == published


async def test_read_after_an_id_returns_exactly_the_rest(broker: AnyBroker) -> None:
    stream = unique_name()
    published = await publish_many(broker, stream, 6)

    for n, event in enumerate(published[:-1]):
        assert await broker.read(stream, event.id, timeout_s=1) == published[n + 1 :]
    assert await broker.read(stream, published[-1].id, timeout_s=0) == []
    assert await broker.read(stream, published[-1].id, timeout_s=0.1) == []


async def test_a_follower_gets_every_event_once_while_they_are_published(
    broker: AnyBroker,
) -> None:
    stream = unique_name()

    async def follow(count: int) -> list[Event]:
        seen: list[Event] = []
        after = None
        while len(seen) < count:
            batch = await broker.read(stream, after, timeout_s=5)
            assert batch, "the follower timed out"
            seen.extend(batch)
            after = batch[-1].id
        return seen

    follower = asyncio.create_task(follow(100))
    published = []
    for n in range(100):
        published.append(await broker.publish(stream, "message.delta", {"n": n}))
        if n % 7 == 0:
            await asyncio.sleep(0.005)
    assert await follower == published


async def test_a_blocked_reader_is_woken_by_publish(make_broker: BrokerFactory) -> None:
    # Redis: the shared XREAD blocks for 60 s, so only a wake-up can deliver in time.
    broker = await make_broker(read_block_s=60)
    stream = unique_name()
    first = await broker.publish(stream, "turn.queued", {})
    reader = asyncio.create_task(broker.read(stream, first.id, timeout_s=30))
    await eventually(lambda: broker.pending_reads == 1)

    second = await broker.publish(stream, "turn.started", {"attempt": 1})
    async with asyncio.timeout(10):
        assert await reader == [second]

    other = unique_name()  # a stream the in-flight XREAD does not cover yet
    reader = asyncio.create_task(broker.read(other, None, timeout_s=30))
    await eventually(lambda: broker.pending_reads == 1)
    event = await broker.publish(other, "turn.queued", {})
    async with asyncio.timeout(10):
        assert await reader == [event]


async def test_reading_an_unknown_stream_waits_for_its_first_event(broker: AnyBroker) -> None:
    stream = unique_name()
    assert await broker.read(stream, None, timeout_s=0.1) == []

    reader = asyncio.create_task(broker.read(stream, None, timeout_s=30))
    await eventually(lambda: broker.pending_reads == 1)
    event = await broker.publish(stream, "turn.queued", {})
    async with asyncio.timeout(5):
        assert await reader == [event]


async def test_many_readers_on_many_streams_all_get_their_events(
    make_broker: BrokerFactory,
) -> None:
    broker = await make_broker(max_connections=4)
    streams = [unique_name() for _ in range(50)]
    first = {stream: await broker.publish(stream, "turn.queued", {}) for stream in streams}
    readers = [
        (stream, asyncio.create_task(broker.read(stream, first[stream].id, timeout_s=30)))
        for stream in streams
        for _ in range(4)
    ]
    await eventually(lambda: broker.pending_reads == 200, timeout_s=15)
    connections_while_waiting = await count_connections(broker)

    latest = {
        stream: await broker.publish(stream, "message.delta", {"s": stream}) for stream in streams
    }
    async with asyncio.timeout(15):
        for stream, reader in readers:
            assert await reader == [latest[stream]]
    assert broker.pending_reads == 0
    if isinstance(broker, RedisBroker):  # 4 for commands + 1 for the blocking reader
        assert 1 <= connections_while_waiting <= 5
        assert 1 <= await count_connections(broker) <= 5


async def test_publishes_at_once_on_many_streams_keep_each_streams_order(
    broker: AnyBroker,
) -> None:
    """Many turns publishing at the same moment (the Redis broker sends those in batches):
    each stream gets every event once, in its publisher's order, with increasing ids."""
    streams = [unique_name() for _ in range(20)]

    async def publish_all(stream: str) -> list[Event]:
        return [await broker.publish(stream, "message.delta", {"n": n}) for n in range(25)]

    published = await asyncio.gather(*(publish_all(stream) for stream in streams))

    for stream, events in zip(streams, published, strict=True):
        assert await broker.read(stream, None, timeout_s=0) == events
        assert [event.data["n"] for event in events] == list(range(25))
        assert len({event.id for event in events}) == 25


async def count_connections(broker: AnyBroker) -> int:
    if not isinstance(broker, RedisBroker):
        return 0
    admin = Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        clients = await admin.client_list()
    finally:
        await admin.aclose()
    return sum(1 for client in clients if client.get("name") == broker.client_name)


async def test_cancelled_readers_leave_nothing_behind(broker: AnyBroker) -> None:
    streams = [unique_name() for _ in range(20)]
    readers = [asyncio.create_task(broker.read(s, None, timeout_s=30)) for s in streams * 5]
    await eventually(lambda: broker.pending_reads == 100)

    for reader in readers:
        reader.cancel()
    await asyncio.gather(*readers, return_exceptions=True)
    assert broker.pending_reads == 0
    event = await broker.publish(streams[0], "turn.queued", {})
    assert await broker.read(streams[0], None, timeout_s=1) == [event]


@pytest.mark.parametrize("bad_id", ["", "abc", "-1", "1.5", "1-x", "1-2-3", " 1", "1" * 25])
async def test_read_rejects_an_id_the_broker_never_issues(broker: AnyBroker, bad_id: str) -> None:
    with pytest.raises(BadRequest):
        await broker.read(unique_name(), bad_id, timeout_s=0)


async def test_expire_deletes_the_stream(broker: AnyBroker) -> None:
    stream = unique_name()
    event = await broker.publish(stream, "turn.completed", {"message_id": "m1"})
    await broker.expire(stream, 0.3)
    assert await broker.read(stream, None, timeout_s=0) == [event]

    async def gone() -> bool:
        return await broker.read(stream, None, timeout_s=0) == []

    await eventually(gone)
    assert await broker.read(stream, None, timeout_s=0.1) == []


async def test_stream_keeps_about_the_cap_of_newest_events(make_broker: BrokerFactory) -> None:
    broker = await make_broker(stream_max_events=10)
    stream = unique_name()
    published = await publish_many(broker, stream, 300)

    kept = await broker.read(stream, None, timeout_s=0)
    assert 10 <= len(kept) < 300
    assert kept == published[-len(kept) :]


async def test_cancel_flags_are_per_turn_and_expire(make_broker: BrokerFactory) -> None:
    broker = await make_broker(cancel_ttl_s=0.3)
    turn, other = unique_name(), unique_name()
    assert not await broker.cancel_requested(turn)

    await broker.request_cancel(turn)
    assert await broker.cancel_requested(turn)
    assert not await broker.cancel_requested(other)
    assert await broker.cancels_requested([turn, other]) == {turn}
    assert await broker.cancels_requested([]) == set()

    async def forgotten() -> bool:
        return not await broker.cancel_requested(turn) and not await broker.cancels_requested(
            [turn]
        )

    await eventually(forgotten)


async def test_close_wakes_waiting_readers_and_claimers(make_broker: BrokerFactory) -> None:
    broker = await make_broker()
    await broker.ping()
    claimer = asyncio.create_task(broker.claim("w1", timeout_s=30))
    reader = asyncio.create_task(broker.read(unique_name(), None, timeout_s=30))
    await eventually(lambda: broker.pending_reads == 1)

    async with asyncio.timeout(5):
        await broker.close()
        assert await reader == []
        assert await claimer is None
    with pytest.raises(ServiceUnavailable):
        await broker.ping()
    with pytest.raises(ServiceUnavailable):
        await broker.read(unique_name(), None, timeout_s=1)
