"""The live operations dashboard on a live server, in the embedded and the scaled shape:
after real traffic its numbers move (requests, messages, turns, a provider error, open
WebSocket connections, active users), thresholds set the tiles' states, the SSE variant
streams the same frames, and only operators may see it.

The test process's servers share its Prometheus collectors (one process), so counts are
compared before and after, never to absolute values."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from tests.admin.support import add_user, expect, new_org
from tests.api.conftest import Shape
from tests.api.live import LiveServer, start_live_server
from tests.api.wsclient import channel
from tests.api.wsclient import expect as ws_expect
from tests.api.wsclient import send as ws_send
from tests.broker.support import delete_keys, require_redis, unique_prefix
from tests.conftest import make_settings
from tests.ops.support import OPS_TOKEN, eventually, ops_client

REQUESTS = 12


@pytest.fixture(scope="module")
async def board_live(
    ops_shape: Shape, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[LiveServer]:
    """Every mock call fails (a provider error per turn); rates over a long window, so
    all of the test's traffic stays in it; thresholds low enough for traffic to trip."""
    if ops_shape.redis_url:
        await require_redis()
    settings = make_settings(
        tmp_path_factory.mktemp(f"dashboard-{ops_shape.name}"),
        database_url=ops_shape.database_url,
        redis_url=ops_shape.redis_url,
        redis_prefix=unique_prefix() if ops_shape.redis_url else "chatplane",
        ops_token=OPS_TOKEN,
        presence_interval_s=0.3,
        dashboard_interval_s=0.2,
        dashboard_window_s=600,
        dashboard_thresholds={
            "requests_per_s": [0.0001, 1_000_000],
            "provider_errors_per_min": [1_000_000, 1_000_000],
        },
        mock_failure_rate=1.0,
    )
    server = await start_live_server(
        settings, email=f"dashboard.{ops_shape.name}@example.com", with_user=False
    )
    yield server
    await server.stop()
    if ops_shape.redis_url:
        await delete_keys(settings.redis_prefix)


async def dashboard(live: LiveServer) -> dict[str, Any]:
    async with ops_client(live) as ops:
        return expect(await ops.get("/api/ops/dashboard"), 200)  # type: ignore[no-any-return]


def tile(body: dict[str, Any], key: str) -> dict[str, Any]:
    found: dict[str, Any] = next(t for t in body["tiles"] if t["key"] == key)
    return found


async def test_traffic_moves_the_numbers_and_trips_thresholds(board_live: LiveServer) -> None:
    before = await dashboard(board_live)
    assert before["processes"] >= 1
    assert [t["key"] for t in before["tiles"]][:3] == [
        "active_users",
        "open_streams",
        "requests_per_s",
    ]
    org = await new_org(board_live)
    member = await add_user(board_live, org)

    async with board_live.client(member.key) as api:
        for _ in range(REQUESTS):
            expect(await api.get("/api/conversations"), 200)
        conversation = expect(await api.post("/api/conversations", json={}), 201)
        expect(
            await api.post(
                f"/api/conversations/{conversation['id']}/messages", json={"content": "hi"}
            ),
            202,
        )

    async def turn_failed() -> dict[str, Any] | None:
        body = await dashboard(board_live)
        failed = body["totals"]["turns"].get("failed", 0)
        return body if failed > before["totals"]["turns"].get("failed", 0) else None

    after = await eventually(turn_failed, what="the failed turn is counted")
    totals, was = after["totals"], before["totals"]
    assert totals["requests"] >= was["requests"] + REQUESTS + 2
    assert totals["messages"] >= was["messages"] + 1
    assert totals["provider_errors"] >= was["provider_errors"] + 1

    rate = tile(after, "requests_per_s")
    assert rate["value"] > 0
    assert rate["state"] == "warning"  # over 0.0001/s, under a million
    assert after["window_s"] > 0
    errors = tile(after, "provider_errors_per_min")
    assert errors["value"] > 0
    assert errors["state"] == "ok"  # the threshold was set out of reach
    assert tile(after, "latency_p95_s")["value"] > 0
    assert tile(after, "active_users")["value"] >= 1
    assert tile(after, "queue_depth")["value"] is not None
    assert len(after["history"]["requests_per_s"]) >= 2


async def test_open_websockets_count_as_open_streams(board_live: LiveServer) -> None:
    org = await new_org(board_live)
    before = await dashboard(board_live)
    async with channel(board_live.base_url, org.owner.key) as ws:
        await ws_send(ws, type="subscribe", turn_id="no-such-turn")
        await ws_expect(ws, "error")

        async def counted() -> dict[str, Any] | None:
            body = await dashboard(board_live)
            opened = body["websockets"]["connections"] > before["websockets"]["connections"]
            return body if opened else None

        during = await eventually(counted, what="the connection is counted")
        assert tile(during, "open_streams")["value"] >= 1

    async def closed() -> bool:
        body = await dashboard(board_live)
        return bool(body["websockets"]["connections"] == before["websockets"]["connections"])

    await eventually(closed, what="the closed connection leaves the count")


async def test_live_streams_dashboard_frames(board_live: LiveServer) -> None:
    frames: list[dict[str, Any]] = []
    async with (
        ops_client(board_live) as ops,
        ops.stream("GET", "/api/ops/live") as answer,
    ):
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/event-stream")
        event = None
        async for line in answer.aiter_lines():
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: ") and event == "dashboard":
                frames.append(orjson.loads(line.removeprefix("data: ")))
                if len(frames) == 2:
                    break
    assert [len(frame["tiles"]) for frame in frames] == [len(frames[0]["tiles"])] * 2
    assert frames[1]["time"] > frames[0]["time"]
    assert {t["state"] for t in frames[1]["tiles"]} <= {"ok", "warning", "critical", "unknown"}


async def test_only_operators_see_the_dashboard(board_live: LiveServer) -> None:
    org = await new_org(board_live)
    async with httpx.AsyncClient(base_url=board_live.base_url, timeout=10) as anonymous:
        expect(await anonymous.get("/api/ops/dashboard"), 401)
        expect(await anonymous.get("/api/ops/live"), 401)
    async with board_live.client(org.owner.key) as admin:  # an organisation's owner
        expect(await admin.get("/api/ops/dashboard"), 403, "not_superadmin")
        expect(await admin.get("/api/ops/live"), 403, "not_superadmin")
    boss = await new_org(board_live, superadmin=True)
    async with board_live.client(boss.owner.key) as operator:
        assert len(expect(await operator.get("/api/ops/dashboard"), 200)["tiles"]) == 11
