"""Helpers of the operations tests: the ops token, and jobs taken out of the queue the way
a lost or dead worker leaves them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from chatplane.broker.protocol import Broker, Job
from tests.api.live import LiveServer
from tests.conftest import RUN_ID

OPS_TOKEN = "ops-token-for-tests-" + RUN_ID
GHOST = "ghost-consumer"  # a worker that takes a job and never finishes it


def ops_client(live: LiveServer, token: str | None = OPS_TOKEN) -> httpx.AsyncClient:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(base_url=live.base_url, headers=headers, timeout=30)


async def take_job(broker: Broker) -> Job:
    """Claim the next job as a worker that will never finish it."""
    job = await broker.claim(GHOST, timeout_s=5)
    assert job is not None, "no job in the queue"
    return job


async def lose_job(broker: Broker) -> Job:
    """The next job vanishes (acked without a result), as when Redis lost it."""
    job = await take_job(broker)
    await broker.ack(job)
    return job


async def empty_queue(broker: Broker) -> None:
    while (job := await broker.claim(GHOST, timeout_s=0.05)) is not None:
        await broker.ack(job)


async def eventually(
    check: Callable[[], Awaitable[Any]], *, timeout_s: float = 10, what: str = "condition"
) -> Any:
    """Poll `check` until it returns something true, and return that (no fixed sleeps)."""
    deadline = time.monotonic() + timeout_s
    while True:
        outcome = await check()
        if outcome:
            return outcome
        assert time.monotonic() < deadline, f"{what}: not reached within {timeout_s} s"
        await asyncio.sleep(0.05)
