"""Bad input gets a clear 4xx problem with a stable code, never a 500."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from chatplane.app import create_app
from chatplane.db.engine import Database, create_engine
from tests.api.live import LiveServer
from tests.conftest import make_settings


async def test_requests_without_credentials_are_401(live: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live.base_url) as anonymous:
        response = await anonymous.get("/api/conversations")
        assert response.status_code == 401
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["code"] == "unauthorized"
        bad = await anonymous.get("/api/conversations", headers={"authorization": "Bearer cp_nope"})
        assert bad.json()["code"] == "invalid_api_key"
        basic = await anonymous.get("/api/conversations", headers={"authorization": "Basic eA=="})
        assert basic.status_code == 401
        assert basic.json()["code"] == "invalid_authorization"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "content"),
        ({"content": ""}, "content"),
        ({"content": 5}, "content"),
        ({"content": "hi", "model": ""}, "model"),
    ],
)
async def test_invalid_messages_are_422_with_the_field(
    live: LiveServer, body: dict[str, object], field: str
) -> None:
    async with live.client() as client:
        conversation = (await client.post("/api/conversations", json={})).json()
        response = await client.post(f"/api/conversations/{conversation['id']}/messages", json=body)
        assert response.status_code == 422
        problem = response.json()
        assert problem["code"] == "validation_error"
        assert problem["field"] == field


async def test_malformed_json_is_422(live: LiveServer) -> None:
    async with live.client() as client:
        response = await client.post(
            "/api/conversations", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert response.status_code == 422
        assert response.json()["code"] == "validation_error"


async def test_unknown_model_is_404(live: LiveServer) -> None:
    async with live.client() as client:
        response = await client.post("/api/conversations", json={"model": "gpt-nope"})
        assert response.status_code == 404
        assert response.json()["code"] == "model_not_found"
        conversation = (await client.post("/api/conversations", json={})).json()
        sent = await client.post(
            f"/api/conversations/{conversation['id']}/messages",
            json={"content": "hi", "model": "gpt-nope"},
        )
        assert sent.status_code == 404
        assert sent.json()["code"] == "model_not_found"
        stored = (await client.get(f"/api/conversations/{conversation['id']}")).json()
        assert stored["messages"] == []


async def test_oversize_bodies_are_413_and_nothing_is_stored(live: LiveServer) -> None:
    async with live.client() as client:
        conversation = (await client.post("/api/conversations", json={})).json()
        huge = "x" * (live.services.settings.max_request_bytes + 10)
        response = await client.post(
            f"/api/conversations/{conversation['id']}/messages", json={"content": huge}
        )
        assert response.status_code == 413
        assert response.json()["code"] == "payload_too_large"
        stored = (await client.get(f"/api/conversations/{conversation['id']}")).json()
        assert stored["messages"] == []


async def test_unknown_ids_and_routes_are_404(live: LiveServer) -> None:
    async with live.client() as client:
        for path in ("/api/conversations/nope", "/api/turns/nope", "/api/nothing-here"):
            response = await client.get(path)
            assert response.status_code == 404, path
            assert "code" in response.json()


async def test_bad_cursor_and_limit_are_4xx(live: LiveServer) -> None:
    async with live.client() as client:
        bad_cursor = await client.get("/api/conversations", params={"cursor": "%%%"})
        assert bad_cursor.status_code == 400
        assert bad_cursor.json()["code"] == "invalid_cursor"
        bad_limit = await client.get("/api/conversations", params={"limit": 0})
        assert bad_limit.status_code == 422
        assert bad_limit.json()["field"] == "limit"


async def test_bad_event_id_is_400(live: LiveServer) -> None:
    async with live.client() as client:
        conversation = (await client.post("/api/conversations", json={})).json()
        accepted = (
            await client.post(
                f"/api/conversations/{conversation['id']}/messages", json={"content": "hi"}
            )
        ).json()
        response = await client.get(accepted["events_url"], headers={"last-event-id": "not-an-id"})
        assert response.status_code == 400


async def test_request_id_is_echoed_or_made(live: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live.base_url) as client:
        given = await client.get("/healthz", headers={"x-request-id": "abc-123"})
        assert given.headers["x-request-id"] == "abc-123"
        made = await client.get("/healthz")
        assert len(made.headers["x-request-id"]) >= 16
        assert made.headers["x-content-type-options"] == "nosniff"


async def test_openapi_describes_every_route(live: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live.base_url) as client:
        schema = (await client.get("/openapi.json")).json()
    paths = schema["paths"]
    for path in (
        "/api/auth/login",
        "/api/conversations",
        "/api/conversations/{conversation_id}/messages",
        "/api/turns/{turn_id}/events",
        "/v1/chat/completions",
        "/v1/models",
        "/healthz",
        "/readyz",
    ):
        assert path in paths, path
    assert (
        "text/event-stream"
        in (paths["/api/turns/{turn_id}/events"]["get"]["responses"]["200"]["content"])
    )


async def test_an_unhandled_error_is_a_500_problem_with_the_request_id(
    live: LiveServer,
) -> None:
    """An exception no handler knows reaches Starlette's outermost error handler; its 500
    still carries the request id and the usual headers, and nothing of the exception."""
    app = create_app(live.services.settings, services=live.services)

    @app.get("/api/boom")
    async def boom() -> None:
        raise RuntimeError("secret detail of the failure")

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/api/boom", headers={"x-request-id": "req-500"})
    assert response.status_code == 500
    assert response.headers["x-request-id"] == "req-500"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.json()["code"] == "internal_error"
    assert "secret detail" not in response.text


@pytest.mark.parametrize("log_content", [False, True])
async def test_database_errors_hide_statement_parameters(tmp_path: Path, log_content: bool) -> None:
    """Parameters (message text, emails) stay out of database errors, and so out of logged
    tracebacks, unless content logging is on."""
    db = Database(create_engine(make_settings(tmp_path, log_content=log_content)))
    insert = text("INSERT INTO t VALUES (:a)")
    try:
        async with db.session() as session:
            await session.execute(text("CREATE TEMP TABLE t (a TEXT PRIMARY KEY)"))
            await session.execute(insert, {"a": "hunter2"})
            with pytest.raises(IntegrityError) as failed:
                await session.execute(insert, {"a": "hunter2"})
    finally:
        await db.close()
    assert ("hunter2" in str(failed.value)) is log_content
