"""The metrics helpers: bounded labels, exactly the series they promise, and cheap."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text
from starlette.routing import Mount, Route
from starlette.types import Message, Receive, Scope, Send

from chatplane.broker import MemoryBroker
from chatplane.broker.protocol import QueueStats
from chatplane.db.engine import Database, create_engine
from chatplane.http.client import ClientResolver
from chatplane.http.middleware import HttpMiddleware
from chatplane.observability import metrics
from chatplane.observability.exposition import render, render_metrics
from chatplane.providers.protocol import Usage
from tests.conftest import make_settings
from tests.observability.support import local, parse, value

REQUIRED = {
    "chatplane_http_requests_total",
    "chatplane_http_request_duration_seconds_bucket",
    "chatplane_turn_first_token_seconds_bucket",
    "chatplane_turn_duration_seconds_bucket",
    "chatplane_tokens_total",
    "chatplane_cost_usd_total",
    "chatplane_provider_errors_total",
    "chatplane_active_streams",
    "chatplane_queue_depth",
    "chatplane_queue_oldest_job_age_seconds",
    "chatplane_running_turns",
    "chatplane_jobs_reclaimed_total",
    "chatplane_jobs_dead_lettered_total",
    "chatplane_db_pool_in_use",
    "chatplane_db_pool_size",
    "chatplane_db_pool_overflow",
    "chatplane_db_pool_usage_ratio",
    "chatplane_redis_errors_total",
    "chatplane_limit_refusals_total",
    "chatplane_login_failures_total",
}


@dataclass
class FakeTurn:
    model: str
    tenant_id: str
    created_at: datetime


@dataclass
class FakeRecord:
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float


def test_every_promised_metric_is_exported() -> None:
    assert metrics.exported_metric_names() >= REQUIRED
    assert all(name.startswith("chatplane_") for name in metrics.exported_metric_names())


def test_limit_and_login_labels_stay_bounded() -> None:
    before = local("chatplane_limit_refusals_total", kind="rate", scope="key")
    metrics.limit_refused("rate", "key")
    assert local("chatplane_limit_refusals_total", kind="rate", scope="key") == before + 1

    odd = local("chatplane_limit_refusals_total", kind="other", scope="other")
    metrics.limit_refused("user-123", "/api/x/9")
    assert local("chatplane_limit_refusals_total", kind="other", scope="other") == odd + 1

    locked = local("chatplane_login_failures_total", reason="locked")
    metrics.login_failed("locked")
    metrics.login_failed("ada@example.com")
    assert local("chatplane_login_failures_total", reason="locked") == locked + 1
    assert local("chatplane_login_failures_total", reason="ada@example.com") == 0


def test_a_gateway_call_counts_tokens_cost_and_first_token() -> None:
    labels = {"model": "gw-model", "tenant": "t-gw"}
    metrics.observe_gateway_call(
        "gw-model", "t-gw", Usage(prompt_tokens=7, completion_tokens=5), 0.25, 0.3
    )
    metrics.observe_gateway_call("gw-model", "t-gw", None, 0.0, None)  # nothing known
    assert local("chatplane_tokens_total", direction="input", **labels) == 7
    assert local("chatplane_tokens_total", direction="output", **labels) == 5
    assert local("chatplane_cost_usd_total", **labels) == 0.25
    assert local("chatplane_gateway_first_token_seconds_count", model="gw-model") == 1
    assert local("chatplane_gateway_first_token_seconds_sum", model="gw-model") == 0.3


def test_streams_go_up_and_down() -> None:
    before = local("chatplane_active_streams", kind="gateway")
    metrics.gateway_stream_started()
    assert local("chatplane_active_streams", kind="gateway") == before + 1
    metrics.gateway_stream_ended()
    assert local("chatplane_active_streams", kind="gateway") == before


async def test_a_turn_records_first_token_once_and_its_outcome() -> None:
    turn = FakeTurn("turn-model", "t-turn", datetime.now(UTC) - timedelta(seconds=2))
    reclaimed = local("chatplane_jobs_reclaimed_total")

    async def run() -> None:  # a task of its own, as the worker runs each turn
        metrics.turn_started(turn, restarted=True)
        metrics.turn_first_token()
        metrics.turn_first_token()
        metrics.turn_ended(turn, "completed", FakeRecord(3, 4, 0.5))

    await asyncio.create_task(run())
    assert local("chatplane_jobs_reclaimed_total") == reclaimed + 1
    assert local("chatplane_turn_first_token_seconds_count", model="turn-model") == 1
    assert local("chatplane_turn_first_token_seconds_sum", model="turn-model") >= 2
    duration = {"model": "turn-model", "outcome": "completed"}
    assert local("chatplane_turn_duration_seconds_count", **duration) == 1
    assert local("chatplane_tokens_total", model="turn-model", tenant="t-turn", direction="output")
    assert local("chatplane_cost_usd_total", model="turn-model", tenant="t-turn") == 0.5


def test_an_abandoned_turn_counts_as_dead_lettered() -> None:
    turn = FakeTurn("dead-model", "t-dead", datetime.now(UTC).replace(tzinfo=None))  # SQLite
    dead = local("chatplane_jobs_dead_lettered_total")
    metrics.turn_ended(turn, "failed", error_code="provider_error")
    assert local("chatplane_jobs_dead_lettered_total") == dead
    metrics.turn_ended(turn, "failed", error_code="turn_abandoned")
    assert local("chatplane_jobs_dead_lettered_total") == dead + 1
    failed = {"model": "dead-model", "outcome": "failed"}
    assert local("chatplane_turn_duration_seconds_count", **failed) == 2


async def _endpoint(scope: Scope, receive: Receive, send: Send) -> None:
    raise AssertionError("never called")


def test_route_labels_are_templates_or_unmatched() -> None:
    http = metrics.HttpMetrics()

    class App:
        routes = [
            Route("/api/turns/{turn_id}/events", _endpoint),
            Mount("/static", app=_endpoint, name="static"),
        ]

    class FastApiRoute:
        path = "/api/conversations/{conversation_id}"

    assert http.route({"route": FastApiRoute(), "app": App()}) == FastApiRoute.path
    assert http.route({"endpoint": _endpoint, "app": App()}) == "/api/turns/{turn_id}/events"
    assert http.route({"app": App()}) == "unmatched"
    assert http.route({"endpoint": object(), "app": App()}) == "unmatched"


def test_unknown_methods_are_other() -> None:
    http = metrics.HttpMetrics()
    before = local("chatplane_http_requests_total", route="unmatched", method="other", status="400")
    http.observe({"method": "BREW", "app": None}, 400, 0.001)
    after = local("chatplane_http_requests_total", route="unmatched", method="other", status="400")
    assert after == before + 1


async def test_the_middleware_times_a_stream_to_its_last_byte() -> None:
    async def streaming(scope: Scope, receive: Receive, send: Send) -> None:
        scope["route"] = type("R", (), {"path": "/slow/{id}"})()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(3):
            await asyncio.sleep(0.1)  # the stream under test takes its time
            await send({"type": "http.response.body", "body": b"x", "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    middleware = HttpMiddleware(streaming, max_body_bytes=1024, clients=ClientResolver([]))
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        sent.append(message)

    labels = {"route": "/slow/{id}", "method": "GET"}
    before = local("chatplane_http_request_duration_seconds_sum", **labels)
    scope = {"type": "http", "method": "GET", "path": "/slow/1", "headers": [], "app": None}
    await middleware(scope, receive, send)
    assert len(sent) == 5
    assert local("chatplane_http_request_duration_seconds_sum", **labels) - before >= 0.3
    assert local("chatplane_http_requests_total", status="200", **labels) >= 1


async def test_the_middleware_counts_a_crash_as_500() -> None:
    async def crashing(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("boom")

    middleware = HttpMiddleware(crashing, max_body_bytes=1024, clients=ClientResolver([]))
    labels = {"route": "unmatched", "method": "DELETE", "status": "500"}
    before = local("chatplane_http_requests_total", **labels)
    scope = {"type": "http", "method": "DELETE", "path": "/x", "headers": [], "app": None}
    with pytest.raises(RuntimeError):
        await middleware(scope, _never, _never)  # type: ignore[arg-type]
    assert local("chatplane_http_requests_total", **labels) == before + 1


async def _never(*_: object) -> Message:
    raise AssertionError("not used")


async def test_the_pool_gauges_follow_checkouts(tmp_path: Path) -> None:
    db = Database(create_engine(make_settings(tmp_path)))
    try:
        async with db.session() as session:
            await session.execute(text("SELECT 1"))
            assert local("chatplane_db_pool_in_use") == 1
            assert local("chatplane_db_pool_size") == db.engine.sync_engine.pool.size()  # type: ignore[attr-defined]
            assert 0 < local("chatplane_db_pool_usage_ratio") <= 1
        assert local("chatplane_db_pool_in_use") == 0
        assert local("chatplane_db_pool_usage_ratio") == 0
    finally:
        await db.close()


def test_render_adds_the_queue_read_at_scrape_time() -> None:
    samples = parse(render(QueueStats(depth=3, oldest_waiting_age_s=1.5)).decode())
    assert value(samples, "chatplane_queue_depth") == 3
    assert value(samples, "chatplane_queue_oldest_job_age_seconds") == 1.5
    without = parse(render(None).decode())
    assert ("chatplane_queue_depth", frozenset()) not in without


async def test_render_metrics_asks_the_broker() -> None:
    broker = MemoryBroker()
    await broker.start()
    await broker.enqueue("turn", {"turn_id": "t"})
    samples = parse((await render_metrics(broker)).decode())
    assert value(samples, "chatplane_queue_depth") == 1
    await broker.close()
    closed = parse((await render_metrics(broker)).decode())  # the rest is still served
    assert ("chatplane_queue_depth", frozenset()) not in closed
    assert any(name == "chatplane_jobs_reclaimed_total" for name, _ in closed)
