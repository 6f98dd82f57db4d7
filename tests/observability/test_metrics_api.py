"""`GET /metrics` on a live server: counters move with route templates, not raw paths."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from tests.api.live import PASSWORD, LiveServer, start_live_server
from tests.api.sse import read_events, text_of
from tests.conftest import make_settings
from tests.observability.support import Samples, parse, total, value


@pytest.fixture(scope="module")
async def live(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LiveServer]:
    settings = make_settings(tmp_path_factory.mktemp("metrics"), mock_chunk_delay_ms=2.0)
    server = await start_live_server(settings, email="metrics@example.com")
    yield server
    await server.stop()


async def scrape(http: httpx.AsyncClient) -> Samples:
    response = await http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(response.text)


async def test_metrics_move_with_route_templates(live: LiveServer) -> None:
    async with live.client() as http:
        before = await scrape(http)
        conversation = (await http.post("/api/conversations", json={})).json()
        accepted = await http.post(
            f"/api/conversations/{conversation['id']}/messages",
            json={"content": "count these words", "model": "mock-echo"},
        )
        assert accepted.status_code == 202
        frames = await read_events(http, accepted.json()["events_url"])
        assert text_of(frames) == "count these words"
        assert (await http.get("/api/conversations/no-such-id")).status_code == 404
        assert (await http.get("/no/such/page/at-all")).status_code == 404
        login = await http.post(
            "/api/auth/login", json={"email": live.email, "password": PASSWORD + "-wrong"}
        )
        assert login.status_code == 401
        after = await scrape(http)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    requests = "chatplane_http_requests_total"
    conversation_route = "/api/conversations/{conversation_id}"
    assert moved(requests, route=conversation_route, method="GET", status="404") == 1
    assert moved(requests, route="unmatched", method="GET", status="404") == 1
    assert moved(requests, route="/api/conversations", method="POST", status="201") == 1
    messages = "/api/conversations/{conversation_id}/messages"
    assert moved(requests, route=messages, method="POST", status="202") == 1
    events = {"route": "/api/turns/{turn_id}/events", "method": "GET"}
    assert moved(requests, status="200", **events) == 1
    assert moved("chatplane_http_request_duration_seconds_count", **events) == 1
    assert moved(requests, route="/metrics", method="GET", status="200") == 1
    assert moved("chatplane_login_failures_total", reason="credentials") == 1

    # No raw path, id or user becomes a label.
    routes = {dict(labels).get("route") for name, labels in after if name == requests}
    assert "/no/such/page/at-all" not in routes
    assert not any(conversation["id"] in str(labels) for _, labels in after)

    # The turn: time to first token, duration, tokens by model and tenant.
    model = {"model": "mock-echo"}
    assert moved("chatplane_turn_first_token_seconds_count", **model) == 1
    assert moved("chatplane_turn_duration_seconds_count", outcome="completed", **model) == 1
    output = total(after, "chatplane_tokens_total", direction="output", **model) - total(
        before, "chatplane_tokens_total", direction="output", **model
    )
    assert output >= 3
    assert value(after, "chatplane_active_streams", kind="sse") == 0  # the stream ended
    assert value(after, "chatplane_running_turns") == 0

    # Live state read at scrape time.
    assert value(after, "chatplane_queue_depth") == 0
    assert ("chatplane_queue_oldest_job_age_seconds", frozenset()) in after
    assert value(after, "chatplane_db_pool_size") > 0


async def test_metrics_is_not_in_the_openapi_schema(live: LiveServer) -> None:
    async with live.client() as http:
        schema = (await http.get("/openapi.json")).json()
    assert "/metrics" not in schema["paths"]


async def test_an_open_stream_is_counted(live: LiveServer) -> None:
    async with live.client() as http:
        conversation = (await http.post("/api/conversations", json={})).json()
        words = " ".join(f"w{i}" for i in range(40))
        accepted = await http.post(
            f"/api/conversations/{conversation['id']}/messages", json={"content": words}
        )
        url = accepted.json()["events_url"]
        async with http.stream("GET", url) as stream:
            assert stream.status_code == 200
            during = await scrape(http)
            async for _ in stream.aiter_bytes():
                pass
        after = await scrape(http)
    assert value(during, "chatplane_active_streams", kind="sse") >= 1
    assert value(after, "chatplane_active_streams", kind="sse") == 0
