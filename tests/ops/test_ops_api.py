"""The operations API on a live server, in the embedded and the scaled shape: the status
of the deployment, who may call it, draining, dead letters, and cancelling or requeueing
any tenant's turn."""

from __future__ import annotations

import os
import socket
from typing import Any

import httpx
from sqlalchemy import select

from chatplane.auth.models import AuditEvent
from chatplane.chat.worker import TurnWorker
from tests.admin.support import Org, add_user, expect, new_org
from tests.api.conftest import Shape
from tests.api.live import LiveServer
from tests.ops.support import (
    empty_queue,
    eventually,
    lose_job,
    ops_client,
    take_job,
)

WORDS = " ".join(f"w{i}" for i in range(60))  # about 2.4 s of mock-echo at 40 ms a word


async def status_of(live: LiveServer) -> dict[str, Any]:
    async with ops_client(live) as ops:
        return expect(await ops.get("/api/ops/status"), 200)  # type: ignore[no-any-return]


async def post_turn(live: LiveServer, key: str, content: str = WORDS) -> str:
    async with live.client(key) as api:
        conversation = expect(await api.post("/api/conversations", json={}), 201)
        accepted = await api.post(
            f"/api/conversations/{conversation['id']}/messages", json={"content": content}
        )
    return str(expect(accepted, 202)["turn_id"])


async def turn_status(live: LiveServer, key: str, turn_id: str) -> str:
    async with live.client(key) as api:
        return str(expect(await api.get(f"/api/turns/{turn_id}"), 200)["status"])


async def audited(live: LiveServer, action: str, subject: str | None = None) -> list[AuditEvent]:
    async with live.services.db.session() as session:
        statement = select(AuditEvent).where(AuditEvent.action == action)
        if subject is not None:
            statement = statement.where(AuditEvent.subject == subject)
        return list((await session.scalars(statement)).all())


async def test_status_describes_this_process_and_the_deployment(
    ops_live: LiveServer, ops_shape: Shape
) -> None:
    status = await status_of(ops_live)

    me = status["process"]
    assert me["id"] == f"{socket.gethostname()}-{os.getpid()}"
    assert me["kind"] == "api"
    assert me["draining"] is False
    assert me["since"] is None
    assert me["inflight"] == 0
    assert status["version"]
    listed = {p["id"]: p for p in status["processes"]}
    assert list(listed) == [me["id"]]  # a server of its own: only itself
    this = listed[me["id"]]
    assert this["kind"] == "api"
    assert this["stale"] is False
    assert this["seen_s_ago"] < 5
    assert this["running_turns"] == 0
    assert this["concurrency"] >= 1
    assert this["draining"] is False
    assert this["inflight"] == 0
    assert status["queue"]["depth"] >= 0
    assert status["queue"]["error"] is None
    assert status["turns"]["running"] >= 0
    assert status["turns"]["queued"] >= 0
    assert status["database"] == {"reachable": True, "error": None}
    if ops_shape.redis_url:
        assert status["redis"] == {"reachable": True, "error": None}
        pool = status["db_pool"]
        assert pool["size"] == ops_live.services.settings.db_pool_size
        assert 0 <= pool["checked_out"] <= pool["size"] + pool["max_overflow"]
    else:
        assert status["redis"] is None


async def test_only_operators_may_use_the_ops_api(ops_live: LiveServer) -> None:
    org: Org = await new_org(ops_live)  # its owner administers a tenant, not the platform
    member = await add_user(ops_live, org)
    operator = await new_org(ops_live, superadmin=True)

    async with ops_client(ops_live, token=None) as anonymous:
        expect(await anonymous.get("/api/ops/status"), 401, "unauthorized")
    async with ops_client(ops_live, token="not-the-ops-token-at-all") as wrong:
        assert (await wrong.get("/api/ops/status")).status_code == 401
    for key in (org.owner.key, member.key):
        async with ops_client(ops_live, token=key) as tenant:
            expect(await tenant.get("/api/ops/status"), 403, "not_superadmin")
            expect(await tenant.post("/api/ops/drain"), 403, "not_superadmin")
            expect(await tenant.get("/api/ops/dead-letters"), 403, "not_superadmin")
    async with ops_client(ops_live, token=operator.owner.key) as superadmin:
        assert expect(await superadmin.get("/api/ops/status"), 200)["process"]["kind"] == "api"
    async with ops_client(ops_live) as holder:
        expect(await holder.get("/api/ops/status"), 200)
    # Problems, not HTML or stack traces, on every error.
    async with ops_client(ops_live) as holder:
        missing = await holder.post("/api/ops/turns/nope/cancel")
        expect(missing, 404, "turn_not_found")
        assert missing.headers["content-type"] == "application/problem+json"
        expect(await holder.get("/api/ops/dead-letters?limit=0"), 422, "validation_error")


async def test_a_running_turn_shows_and_an_operator_cancels_it(ops_live: LiveServer) -> None:
    org = await new_org(ops_live)
    turn_id = await post_turn(ops_live, org.owner.key)

    async def running() -> dict[str, Any] | None:
        status = await status_of(ops_live)
        this = status["processes"][0]
        busy = status["turns"]["running"] >= 1 and this["running_turns"] >= 1
        return status if busy else None

    await eventually(running, what="the turn shows as running")

    async with ops_client(ops_live) as ops:
        answer = expect(await ops.post(f"/api/ops/turns/{turn_id}/cancel"), 200)
        assert answer == {
            "turn_id": turn_id,
            "tenant_id": org.tenant_id,
            "status": "running",
            "action": "cancel_requested",
            "job_id": None,
        }

        async def cancelled() -> bool:
            return await turn_status(ops_live, org.owner.key, turn_id) == "cancelled"

        await eventually(cancelled, what="the turn ends cancelled")
        expect(await ops.post(f"/api/ops/turns/{turn_id}/cancel"), 409, "turn_ended")
        expect(await ops.post(f"/api/ops/turns/{turn_id}/requeue"), 409, "turn_ended")

    async def idle() -> bool:
        return (await status_of(ops_live))["processes"][0]["running_turns"] == 0

    await eventually(idle, what="the worker's slot is free again")
    [event] = await audited(ops_live, "ops.turn_cancelled", turn_id)
    assert event.tenant_id == org.tenant_id
    assert event.actor_id is None
    assert '"via":"ops_token"' in event.detail


async def test_drain_fails_readyz_and_undrain_restores_it(ops_live: LiveServer) -> None:
    operator = await new_org(ops_live, superadmin=True)
    async with (
        ops_client(ops_live, token=operator.owner.key) as ops,
        httpx.AsyncClient(base_url=ops_live.base_url) as probe,
    ):
        expect(await probe.get("/readyz"), 200)
        try:
            drained = expect(await ops.post("/api/ops/drain"), 200)
            assert drained["draining"] is True
            assert drained["reason"] == "ops API"
            assert drained["since"] is not None
            ready = await probe.get("/readyz")
            assert ready.status_code == 503, ready.text
            assert ready.json()["checks"]["draining"] == "yes"
            status = expect(await ops.get("/api/ops/status"), 200)
            assert status["process"]["draining"] is True
            assert status["processes"][0]["draining"] is True
        finally:
            undrained = expect(await ops.post("/api/ops/undrain"), 200)
        assert undrained["draining"] is False
        assert undrained["since"] is None
        assert expect(await probe.get("/readyz"), 200)["status"] == "ready"
    for action in ("ops.drain", "ops.undrain"):
        events = [e for e in await audited(ops_live, action) if e.actor_id == operator.owner.id]
        assert len(events) == 1, action


async def test_dead_letters_are_listed_and_a_stuck_queued_turn_is_cancelled(
    idle_live: LiveServer,
) -> None:
    broker = idle_live.services.broker
    org = await new_org(idle_live)
    await empty_queue(broker)
    turn_id = await post_turn(idle_live, org.owner.key, "stuck")
    status = await status_of(idle_live)
    assert status["turns"]["queued"] >= 1
    assert status["queue"]["depth"] == 1

    # A worker takes the job and gives it back: past the attempt limit (1), it is dead.
    job = await take_job(broker)
    await broker.release(job)
    assert await broker.claim("another-worker", timeout_s=0.1) is None
    async with ops_client(idle_live) as ops:
        letters = expect(await ops.get("/api/ops/dead-letters"), 200)["dead_letters"]
        assert letters[0]["job_id"] == job.id
        assert letters[0]["turn_id"] == turn_id
        assert letters[0]["kind"] == "turn"
        assert letters[0]["attempts"] == 1
        assert letters[0]["reason"]
        assert expect(await ops.get("/api/ops/dead-letters?limit=1"), 200)["dead_letters"] == [
            letters[0]
        ]

        # Nothing will run it any more (no job left): the cancel ends it at once.
        assert (await status_of(idle_live))["queue"]["depth"] == 0
        answer = expect(await ops.post(f"/api/ops/turns/{turn_id}/cancel"), 200)
    assert answer["action"] == "cancelled"
    assert answer["status"] == "cancelled"
    assert await turn_status(idle_live, org.owner.key, turn_id) == "cancelled"
    events = await broker.read(turn_id, None, timeout_s=0)
    assert [e.type for e in events][-1] == "turn.cancelled"


async def test_a_queued_turn_with_a_job_is_left_to_its_worker(idle_live: LiveServer) -> None:
    broker = idle_live.services.broker
    org = await new_org(idle_live)
    await empty_queue(broker)
    turn_id = await post_turn(idle_live, org.owner.key, "waiting")
    async with ops_client(idle_live) as ops:
        answer = expect(await ops.post(f"/api/ops/turns/{turn_id}/cancel"), 200)
    assert answer["action"] == "cancel_requested"
    assert answer["status"] == "queued"
    assert await broker.cancel_requested(turn_id)
    await empty_queue(broker)  # tidy: the next tests want an empty queue


async def test_requeue_gives_a_stuck_turn_a_fresh_job(idle_live: LiveServer) -> None:
    broker, services = idle_live.services.broker, idle_live.services
    org = await new_org(idle_live)
    await empty_queue(broker)
    turn_id = await post_turn(idle_live, org.owner.key, "try me again")
    lost = await lose_job(broker)  # the turn stays queued with no job behind it
    assert await turn_status(idle_live, org.owner.key, turn_id) == "queued"

    async with ops_client(idle_live) as ops:
        answer = expect(await ops.post(f"/api/ops/turns/{turn_id}/requeue"), 200)
        assert answer["action"] == "requeued"
        assert answer["status"] == "queued"
        assert answer["job_id"]
        assert answer["job_id"] != lost.id
        assert (await status_of(idle_live))["queue"]["depth"] == 1
        expect(await ops.post("/api/ops/turns/unknown-turn/requeue"), 404, "turn_not_found")

        # A worker comes along and runs the fresh job to the end.
        worker = TurnWorker(broker, services.runner, concurrency=1, max_attempts=3)
        worker.start()
        try:

            async def completed() -> bool:
                return await turn_status(idle_live, org.owner.key, turn_id) == "completed"

            await eventually(completed, what="the requeued turn completes")
        finally:
            await worker.stop(deadline_s=5)
        expect(await ops.post(f"/api/ops/turns/{turn_id}/requeue"), 409, "turn_ended")

    async with idle_live.client(org.owner.key) as api:
        conversation_id = expect(await api.get(f"/api/turns/{turn_id}"), 200)["conversation_id"]
        detail = expect(await api.get(f"/api/conversations/{conversation_id}"), 200)
    replies = [m["content"] for m in detail["messages"] if m["role"] == "assistant"]
    assert replies == ["try me again"]
    [event] = await audited(idle_live, "ops.turn_requeued", turn_id)
    assert event.tenant_id == org.tenant_id


async def test_the_ops_routes_are_in_the_openapi_schema(ops_live: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=ops_live.base_url) as client:
        paths = expect(await client.get("/openapi.json"), 200)["paths"]
    expected = {
        ("/api/ops/status", "get"),
        ("/api/ops/drain", "post"),
        ("/api/ops/undrain", "post"),
        ("/api/ops/dead-letters", "get"),
        ("/api/ops/turns/{turn_id}/cancel", "post"),
        ("/api/ops/turns/{turn_id}/requeue", "post"),
    }
    for path, method in expected:
        operation = paths[path][method]
        assert operation["tags"] == ["ops"]
        assert {"401", "403"} <= set(operation["responses"])
