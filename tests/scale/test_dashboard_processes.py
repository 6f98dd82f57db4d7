"""The live operations dashboard across real processes (the scaled shape): the dashboard of
one API process counts the traffic sent to another and the turns a worker runs, and leaves
out a worker killed with -9 once it goes stale."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from tests.ops.support import OPS_TOKEN, eventually
from tests.scale.conftest import cluster, user_key  # noqa: F401 - the fixtures, used below
from tests.scale.procs import Cluster

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

REQUESTS = 40
ENV = {
    "CHATPLANE_OPS_TOKEN": OPS_TOKEN,
    "CHATPLANE_PRESENCE_INTERVAL_S": "0.3",  # stale after 0.9 s of silence
    "CHATPLANE_DASHBOARD_INTERVAL_S": "0.2",
    "CHATPLANE_DASHBOARD_WINDOW_S": "600",  # every request of the test stays in the window
}


class Board:
    """GET /api/ops/dashboard on one API process, counting the calls (each is a request
    that process counts itself)."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.calls = 0

    async def get(self) -> dict[str, Any]:
        self.calls += 1
        async with httpx.AsyncClient(
            base_url=self.base_url, headers={"authorization": f"Bearer {OPS_TOKEN}"}, timeout=10
        ) as client:
            answer = await client.get("/api/ops/dashboard")
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        return body


def tile(body: dict[str, Any], key: str) -> Any:
    return next(t for t in body["tiles"] if t["key"] == key)["value"]


async def test_one_api_process_sees_the_whole_deployment(
    cluster: Cluster,  # noqa: F811 - the fixture imported above
    user_key: str,  # noqa: F811
) -> None:
    first, second = cluster.api("api-1", **ENV), cluster.api("api-2", **ENV)
    worker = cluster.worker("worker-1", **ENV)
    await asyncio.gather(
        first.wait_ready(), second.wait_ready(), worker.wait_for_log("worker_started")
    )
    board = Board(first.base_url)

    async def all_three() -> dict[str, Any] | None:
        body = await board.get()
        return body if body["processes"] == 3 else None

    before = await eventually(all_three, what="three live processes on the dashboard")
    calls_before = board.calls

    async with httpx.AsyncClient(
        base_url=second.base_url, headers={"authorization": f"Bearer {user_key}"}, timeout=10
    ) as api:
        for _ in range(REQUESTS):
            assert (await api.get("/api/conversations")).status_code == 200
        conversation = (await api.post("/api/conversations", json={})).json()
        accepted = await api.post(
            f"/api/conversations/{conversation['id']}/messages", json={"content": "one two"}
        )
        assert accepted.status_code == 202, accepted.text

    was = before["totals"]

    async def counted() -> dict[str, Any] | None:
        body = await board.get()
        totals = body["totals"]
        # api-1 counted at most its own dashboard calls: the rest came from api-2.
        from_elsewhere = totals["requests"] - was["requests"] - (board.calls - calls_before)
        completed = totals["turns"].get("completed", 0) - was["turns"].get("completed", 0)
        # The message was posted to api-2 only: it is in the sums once api-2's numbers are
        # (other processes' requests, counted in their own time, can fill the count first).
        posted = totals["messages"] - was["messages"]
        done = from_elsewhere >= REQUESTS + 2 and completed >= 1 and posted >= 1
        return body if done else None

    after = await eventually(counted, timeout_s=20, what="api-2's traffic and the worker's turn")
    assert tile(after, "requests_per_s") > 0
    assert tile(after, "turns_per_min") > 0
    assert tile(after, "first_token_p95_s") > 0  # the worker's first token
    assert tile(after, "active_users") >= 1  # seen by api-2, counted on api-1
    assert tile(after, "queue_depth") == 0

    # kill -9: the worker stops announcing; once stale it is no longer summed.
    worker.kill()

    async def two_left() -> dict[str, Any] | None:
        body = await board.get()
        return body if body["processes"] == 2 else None

    await eventually(two_left, what="the killed worker leaves the sums")


async def test_the_processes_of_one_serve_are_summed(
    cluster: Cluster,  # noqa: F811 - the fixture imported above
    user_key: str,  # noqa: F811
) -> None:
    """`serve --workers 2`: metrics live in shared files, yet each process publishes only
    its own numbers, and the dashboard sums the two."""
    api = cluster.api("api-pair", "--workers", "2", **ENV)
    await api.wait_ready()
    board = Board(api.base_url)

    async def both() -> dict[str, Any] | None:
        body = await board.get()
        return body if body["processes"] == 2 else None

    before = await eventually(both, timeout_s=30, what="both processes of the pair")
    calls_before = board.calls
    for _ in range(REQUESTS):  # a connection each, so both processes get some
        async with httpx.AsyncClient(
            base_url=api.base_url, headers={"authorization": f"Bearer {user_key}"}, timeout=10
        ) as http:
            assert (await http.get("/api/conversations")).status_code == 200

    async def counted() -> dict[str, Any] | None:
        body = await board.get()
        sent = REQUESTS + (board.calls - calls_before) - 1  # the last call counts after it
        return body if body["totals"]["requests"] - before["totals"]["requests"] >= sent else None

    after = await eventually(counted, what="every request of both processes")
    assert after["processes"] == 2
