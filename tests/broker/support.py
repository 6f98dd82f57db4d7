"""Helpers for the broker tests: the Redis under test, names, polling."""

from __future__ import annotations

import asyncio
import inspect
import itertools
import os
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import pytest
from redis.asyncio import Redis

from chatplane.broker import MemoryBroker, RedisBroker
from chatplane.broker.protocol import Broker, Event

REDIS_URL = os.environ.get("CHATPLANE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
RUN_ID = uuid.uuid4().hex[:8]
_prefixes = itertools.count()

AnyBroker = MemoryBroker | RedisBroker


class BrokerFactory(Protocol):
    async def __call__(self, **options: Any) -> AnyBroker: ...


def unique_prefix() -> str:
    return f"chatplane-test-{RUN_ID}-{next(_prefixes)}"


def unique_name(kind: str = "turn") -> str:
    return f"{kind}-{uuid.uuid4().hex[:10]}"


async def require_redis() -> None:
    client = Redis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=1)
    try:
        await client.ping()
    except Exception as exc:
        reason = f"Redis is not reachable at {REDIS_URL}: {exc}"
        if os.environ.get("CI"):
            pytest.fail(reason + " (CI is set, so this is a failure)")
        pytest.skip(reason)
    finally:
        await client.aclose()


async def delete_keys(prefix: str) -> None:
    client = Redis.from_url(REDIS_URL)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


async def eventually(
    condition: Callable[[], bool | Awaitable[bool]], *, timeout_s: float = 5.0
) -> None:
    """Poll `condition` until it holds; fail after `timeout_s`."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        outcome = condition()
        if inspect.isawaitable(outcome):
            outcome = await outcome
        if outcome:
            return
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"condition not met within {timeout_s} s")
        await asyncio.sleep(0.01)


TURN_ENDS = {"turn.completed", "turn.failed", "turn.cancelled"}


async def events_until_end(broker: Broker, turn_id: str, *, timeout_s: float = 10) -> list[Event]:
    """Every event of a turn, from the first to its outcome."""
    events: list[Event] = []
    after = None
    async with asyncio.timeout(timeout_s):
        while not events or events[-1].type not in TURN_ENDS:
            batch = await broker.read(turn_id, after, timeout_s=1.0)
            if batch:
                events += batch
                after = batch[-1].id
    return events
