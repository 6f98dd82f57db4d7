"""Jobs: at-least-once delivery with a visibility timeout, on every broker."""

from __future__ import annotations

import asyncio

import pytest

from chatplane.broker import Job, JobLost

from .support import AnyBroker, BrokerFactory, unique_name


async def claim_soon(broker: AnyBroker, consumer: str, timeout_s: float = 3.0) -> Job:
    job = await broker.claim(consumer, timeout_s=timeout_s)
    assert job is not None, f"{consumer} got no job within {timeout_s} s"
    return job


async def test_enqueue_claim_ack(broker: AnyBroker) -> None:
    job_id = await broker.enqueue("turn", {"turn_id": "t1", "tags": ("a", "b")})

    job = await claim_soon(broker, "w1")
    assert (job.id, job.kind, job.attempt) == (job_id, "turn", 1)
    assert job.payload == {"turn_id": "t1", "tags": ["a", "b"]}  # a JSON round trip

    await broker.ack(job)
    assert await broker.queue_depth() == 0
    assert await broker.claim("w1", timeout_s=0.5) is None  # acked: never delivered again


async def test_a_job_can_announce_itself_on_a_stream_first(broker: AnyBroker) -> None:
    turn = unique_name()
    job_id = await broker.enqueue("turn", {"turn_id": turn}, event=(turn, "turn.queued", {"n": 1}))
    [announced] = await broker.read(turn, None, timeout_s=0)
    assert (announced.type, announced.data) == ("turn.queued", {"n": 1})
    job = await claim_soon(broker, "w1")
    assert (job.id, job.payload) == (job_id, {"turn_id": turn})
    # What the job's run publishes comes after the announcement.
    started = await broker.publish(turn, "turn.started", {})
    assert [e.id for e in await broker.read(turn, None, timeout_s=0)] == [announced.id, started.id]
    await broker.ack(job)


async def test_claim_waits_up_to_the_timeout_then_returns_none(broker: AnyBroker) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await broker.claim("w1", timeout_s=0.2) is None
    assert loop.time() - started >= 0.15


async def test_waiting_claim_gets_a_job_enqueued_later(broker: AnyBroker) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    waiting = asyncio.create_task(broker.claim("w1", timeout_s=10))
    await asyncio.sleep(0)
    job_id = await broker.enqueue("turn", {"n": 1})

    job = await waiting
    assert job is not None
    assert job.id == job_id
    assert loop.time() - started < 5


async def test_unacked_job_is_redelivered_with_the_next_attempt(broker: AnyBroker) -> None:
    job_id = await broker.enqueue("turn", {"n": 1})
    first = await claim_soon(broker, "w1")
    assert await broker.claim("w2", timeout_s=0.05) is None  # still within its visibility

    second = await claim_soon(broker, "w2")
    assert (second.id, second.attempt, second.payload) == (job_id, 2, first.payload)
    third = await claim_soon(broker, "w3")
    assert (third.id, third.attempt) == (job_id, 3)


async def test_heartbeat_keeps_a_job_from_redelivery(make_broker: BrokerFactory) -> None:
    # A visibility timeout of a second: a test process paused for 0.3 s (a busy machine)
    # lost the job between two heartbeats with the default.
    broker = await make_broker(visibility_timeout_s=1.0)
    await broker.enqueue("turn", {"n": 1})
    job = await claim_soon(broker, "w1")

    rival = asyncio.create_task(broker.claim("w2", timeout_s=3.0))  # 3 visibility timeouts
    while not rival.done():
        await broker.heartbeat(job)
        await asyncio.sleep(0.05)
    assert rival.result() is None

    again = await claim_soon(broker, "w2")  # heartbeats stopped: reclaimed
    assert (again.id, again.attempt) == (job.id, 2)


async def test_a_lost_claim_cannot_heartbeat_or_release(broker: AnyBroker) -> None:
    await broker.enqueue("turn", {"n": 1})
    stale = await claim_soon(broker, "w1")
    current = await claim_soon(broker, "w2")  # after the visibility timeout

    with pytest.raises(JobLost):
        await broker.heartbeat(stale)
    await broker.release(stale)  # a no-op: w2 still holds it
    await broker.heartbeat(current)
    assert await broker.claim("w3", timeout_s=0.1) is None

    await broker.ack(current)
    with pytest.raises(JobLost):
        await broker.heartbeat(current)


async def test_release_makes_a_job_claimable_at_once(make_broker: BrokerFactory) -> None:
    broker = await make_broker(visibility_timeout_s=30)  # only a release can hand it out
    job_id = await broker.enqueue("turn", {"n": 1})
    job = await claim_soon(broker, "w1")

    await broker.release(job)
    again = await claim_soon(broker, "w2", timeout_s=2)
    assert (again.id, again.attempt) == (job_id, 2)

    waiting = asyncio.create_task(broker.claim("w3", timeout_s=5))  # parked before release
    await asyncio.sleep(0)
    await broker.release(again)
    third = await waiting
    assert third is not None
    assert (third.id, third.attempt) == (job_id, 3)


async def test_job_goes_to_dead_letters_after_max_attempts(make_broker: BrokerFactory) -> None:
    broker = await make_broker(max_attempts=2)
    job_id = await broker.enqueue("turn", {"turn_id": "t9"})
    for attempt in (1, 2):
        job = await claim_soon(broker, f"w{attempt}")
        assert job.attempt == attempt

    assert await broker.claim("w3", timeout_s=1.0) is None  # expired twice: not redelivered
    (letter,) = await broker.dead_letters()
    assert (letter.job.id, letter.job.kind, letter.job.attempt) == (job_id, "turn", 2)
    assert letter.job.payload == {"turn_id": "t9"}
    assert "2 attempts" in letter.reason
    assert await broker.queue_depth() == 0


async def test_released_jobs_count_as_attempts_and_dead_letters_are_newest_first(
    make_broker: BrokerFactory,
) -> None:
    broker = await make_broker(max_attempts=1, visibility_timeout_s=30)
    first_id = await broker.enqueue("turn", {"n": 1})
    second_id = await broker.enqueue("turn", {"n": 2})
    first = await claim_soon(broker, "w1")
    second = await claim_soon(broker, "w1")
    await broker.release(first)
    await broker.release(second)

    assert await broker.claim("w2", timeout_s=0.2) is None
    letters = await broker.dead_letters()
    assert [letter.job.id for letter in letters] == [second_id, first_id]
    assert [letter.job.id for letter in await broker.dead_letters(limit=1)] == [second_id]


async def test_consumers_never_hold_the_same_job(make_broker: BrokerFactory) -> None:
    broker = await make_broker(visibility_timeout_s=30)
    job_ids = [await broker.enqueue("turn", {"n": n}) for n in range(30)]
    held: set[str] = set()
    finished: list[str] = []

    async def work(consumer: str) -> None:
        while (job := await broker.claim(consumer, timeout_s=0.3)) is not None:
            assert job.id not in held, f"{job.id} handed to two consumers"
            held.add(job.id)
            await asyncio.sleep(0.001)  # hold it while the others claim
            held.discard(job.id)
            finished.append(job.id)
            await broker.ack(job)

    await asyncio.gather(*(work(f"w{n}") for n in range(4)))
    assert sorted(finished) == sorted(job_ids)  # each exactly once


async def test_queue_depth_counts_waiting_and_claimed_jobs(broker: AnyBroker) -> None:
    assert await broker.queue_depth() == 0
    for n in range(3):
        await broker.enqueue("turn", {"n": n})
    assert await broker.queue_depth() == 3

    job = await claim_soon(broker, "w1")
    assert await broker.queue_depth() == 3
    await broker.ack(job)
    assert await broker.queue_depth() == 2


async def test_a_cancelled_claim_leaves_the_job_to_others(broker: AnyBroker) -> None:
    parked = asyncio.create_task(broker.claim("w1", timeout_s=30))
    await asyncio.sleep(0.05)  # let it park (in Redis: inside XREADGROUP BLOCK)
    parked.cancel()
    await asyncio.gather(parked, return_exceptions=True)

    job_id = await broker.enqueue("turn", {"n": 1})
    job = await claim_soon(broker, "w2")
    assert job.id == job_id
