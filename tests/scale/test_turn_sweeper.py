"""The turn sweeper in the scaled shape (Postgres + Redis): a turn whose job never reached
the queue is run by a worker, and sweepers in several processes queue it once."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from chatplane.auth.principal import Principal
from chatplane.broker import RedisBroker
from chatplane.chat.sweeper import TurnSweeper
from chatplane.container import Services, build_services
from chatplane.db import migrate
from tests.broker.support import (
    REDIS_URL,
    delete_keys,
    eventually,
    require_redis,
    unique_prefix,
)
from tests.conftest import make_settings, postgres_database
from tests.scale.procs import Cluster

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

WORDS = " ".join(f"w{i}" for i in range(10))


async def _lose_job(prefix: str) -> None:
    """Take the only queued job away, as if the API process died before queuing it."""
    broker = RedisBroker(REDIS_URL, key_prefix=prefix)
    await broker.start()
    try:
        job = await broker.claim("lost", timeout_s=5)
        assert job is not None
        await broker.ack(job)
        assert await broker.queue_depth() == 0
    finally:
        await broker.close()


async def test_a_turn_without_a_job_is_run_once_by_one_of_two_workers(
    cluster: Cluster, user_key: str
) -> None:
    api = cluster.api("api-1")
    await api.wait_ready()
    headers = {"authorization": f"Bearer {user_key}"}
    async with httpx.AsyncClient(base_url=api.base_url, headers=headers, timeout=30) as client:
        conversation = (await client.post("/api/conversations", json={})).json()
        accepted = await client.post(
            f"/api/conversations/{conversation['id']}/messages", json={"content": WORDS}
        )
        assert accepted.status_code == 202, accepted.text
        turn_id = accepted.json()["turn_id"]
        await _lose_job(cluster.env["CHATPLANE_REDIS_PREFIX"])

        sweeping = {"CHATPLANE_TURN_SWEEP_GRACE_S": "0.5", "CHATPLANE_TURN_SWEEP_INTERVAL_S": "0.2"}
        workers = [cluster.worker(f"worker-{n}", **sweeping) for n in (1, 2)]
        await asyncio.gather(*[w.wait_for_log("worker_started") for w in workers])

        async def ended() -> bool:
            turn = (await client.get(f"/api/turns/{turn_id}")).json()
            return turn["status"] not in ("queued", "running")

        await eventually(ended, timeout_s=30)
        assert (await client.get(f"/api/turns/{turn_id}")).json()["status"] == "completed"
        detail = (await client.get(f"/api/conversations/{conversation['id']}")).json()
        assert [m["content"] for m in detail["messages"] if m["role"] == "assistant"] == [WORDS]

    lines = [line for w in workers for line in w.log().splitlines() if turn_id in line]
    assert sum("turn_swept" in line for line in lines) == 1
    assert sum("turn_started" in line for line in lines) == 1


@pytest.fixture
async def scaled_pair(tmp_path: Path) -> AsyncIterator[tuple[Services, Services]]:
    """Two processes' worth of services (own engines, own Redis clients) on a database of
    this test's own, so the sweep sees no other test's turns."""
    await require_redis()
    prefix = unique_prefix()
    async with postgres_database(f"chatplane_sweep_{uuid.uuid4().hex[:10]}") as url:
        settings = make_settings(
            tmp_path,
            database_url=url,
            redis_url=REDIS_URL,
            redis_prefix=prefix,
            turn_sweep_grace_s=0.01,
        )
        await migrate.upgrade(settings.resolved_database_url)
        first = await build_services(settings, run_turns=False)
        second = await build_services(settings, run_turns=False)
        try:
            yield first, second
        finally:
            await first.close()
            await second.close()
            await delete_keys(prefix)


async def test_two_sweepers_at_once_queue_a_lost_turn_once(
    scaled_pair: tuple[Services, Services],
) -> None:
    first, second = scaled_pair
    user = await first.auth.create_user("sweep@example.com", "password-123")
    principal = Principal(
        user_id=user.id, tenant_id=user.tenant_id, email=user.email, role=user.role
    )
    conversation = await first.chat.create_conversation(principal, title=None, model=None)
    turn = await first.chat.post_message(principal, conversation.id, content=WORDS, model=None)
    await _lose_job(first.settings.redis_prefix)
    await asyncio.sleep(0.02)  # past the grace period

    sweepers = [
        TurnSweeper(s.db, s.broker, s.runner, s.settings) for s in (first, second) for _ in (1, 2)
    ]
    results = await asyncio.gather(*[sweeper.sweep() for sweeper in sweepers])
    assert sum(result.requeued for result in results) == 1
    assert sum(result.failed for result in results) == 0
    # Whoever sweeps next finds the job queued.
    assert (await sweepers[0].sweep()).requeued == 0
    assert await first.broker.job_subjects("turn", "turn_id") == {turn.id}
    assert await first.broker.queue_depth() == 1
