"""Helpers of the operations tests: a live server with or without a turn worker, the ops
token, and jobs taken out of the queue the way a lost or dead worker leaves them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import uvicorn

from chatplane.app import create_app
from chatplane.broker.protocol import Broker, Job
from chatplane.container import build_services
from chatplane.db import migrate
from chatplane.settings import Settings
from tests.api.live import LiveServer
from tests.conftest import RUN_ID

OPS_TOKEN = "ops-token-for-tests-" + RUN_ID
GHOST = "ghost-consumer"  # a worker that takes a job and never finishes it


async def start_server(settings: Settings, *, email: str, run_turns: bool) -> LiveServer:
    """As `tests.api.live.start_live_server`, with or without a turn worker: without one,
    a turn stays queued until the test decides what becomes of its job."""
    if not settings.is_embedded_db:
        await migrate.upgrade(settings.resolved_database_url)
    services = await build_services(settings, run_turns=run_turns)
    app = create_app(settings, services=services)
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_level="warning", lifespan="off", loop="asyncio"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(10):
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("the server exited while starting")
            await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    return LiveServer(f"http://127.0.0.1:{port}", services, server, task, email=email)


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
