"""`stats()`: the queue at a glance for metrics, the same on every broker."""

from __future__ import annotations

import asyncio

from .support import AnyBroker


async def test_an_empty_queue(broker: AnyBroker) -> None:
    stats = await broker.stats()
    assert (stats.depth, stats.oldest_waiting_age_s) == (0, 0.0)


async def test_depth_and_the_age_of_the_oldest_waiting_job(broker: AnyBroker) -> None:
    await broker.enqueue("turn", {"turn_id": "t1"})
    await asyncio.sleep(0.25)  # the age under test: time passes while the job waits
    await broker.enqueue("turn", {"turn_id": "t2"})
    stats = await broker.stats()
    assert stats.depth == 2
    assert 0.2 <= stats.oldest_waiting_age_s < 5

    first = await broker.claim("w1", timeout_s=1)
    assert first is not None
    stats = await broker.stats()
    assert stats.depth == 2  # claimed but not acknowledged still counts
    assert stats.oldest_waiting_age_s < 0.2  # the younger job is the oldest waiting now

    second = await broker.claim("w1", timeout_s=1)
    assert second is not None
    stats = await broker.stats()
    assert (stats.depth, stats.oldest_waiting_age_s) == (2, 0.0)  # none waits

    await broker.ack(first)
    await broker.ack(second)
    assert (await broker.stats()).depth == 0
