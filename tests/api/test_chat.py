"""The native chat API against a live server, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import time

import httpx

from tests.api.live import PASSWORD, LiveServer
from tests.api.sse import id_order, read_events, text_of


async def _conversation(client: httpx.AsyncClient, **body: str) -> dict[str, str]:
    response = await client.post("/api/conversations", json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


async def _send(client: httpx.AsyncClient, conversation_id: str, content: str) -> dict[str, str]:
    response = await client.post(
        f"/api/conversations/{conversation_id}/messages", json={"content": content}
    )
    assert response.status_code == 202, response.text
    return dict(response.json())


async def _turn_status(client: httpx.AsyncClient, turn_id: str, want: str) -> dict[str, object]:
    deadline = time.monotonic() + 10
    while True:
        turn = (await client.get(f"/api/turns/{turn_id}")).json()
        if turn["status"] == want or time.monotonic() > deadline:
            assert turn["status"] == want, turn
            return dict(turn)
        await asyncio.sleep(0.02)


async def test_a_turn_streams_the_answer_and_stores_it_once(live: LiveServer) -> None:
    async with live.client() as client:
        conversation = await _conversation(client)
        assert conversation["model"] == "mock-echo"
        assert conversation["title"] == "New chat"
        accepted = await _send(client, conversation["id"], "hello streaming world")
        assert accepted["events_url"] == f"/api/turns/{accepted['turn_id']}/events"

        frames = await read_events(client, accepted["events_url"])
        kinds = [f.event for f in frames]
        assert kinds[0] == "turn.queued"
        assert "turn.started" in kinds
        assert kinds[-1] == "turn.completed"
        assert text_of(frames) == "hello streaming world"
        ids = [id_order(f.id) for f in frames if f.id is not None]
        assert ids == sorted(ids)
        assert len(set(ids)) == len(ids)
        usage = frames[-1].data["usage"]
        assert usage["completion_tokens"] > 0

        detail = (await client.get(f"/api/conversations/{conversation['id']}")).json()
        assert detail["title"] == "hello streaming world"
        assert detail["active_turn_id"] is None
        assert [(m["role"], m["content"]) for m in detail["messages"]] == [
            ("user", "hello streaming world"),
            ("assistant", "hello streaming world"),
        ]
        assert detail["messages"][1]["id"] == frames[-1].data["message_id"]
        turn = await _turn_status(client, accepted["turn_id"], "completed")
        assert turn["assistant_message_id"] == frames[-1].data["message_id"]


async def test_history_is_sent_to_the_model(live: LiveServer) -> None:
    async with live.client() as client:
        conversation = await _conversation(client, model="mock-echo")
        first = await _send(client, conversation["id"], "one")
        await read_events(client, first["events_url"])
        second = await _send(client, conversation["id"], "two")
        frames = await read_events(client, second["events_url"])
        assert text_of(frames) == "two"
        messages = (await client.get(f"/api/conversations/{conversation['id']}")).json()
        assert [m["content"] for m in messages["messages"]] == ["one", "one", "two", "two"]
        usage = frames[-1].data["usage"]
        # The prompt holds the whole history: more than the last message alone.
        assert usage["prompt_tokens"] >= 3


async def test_resume_with_last_event_id_loses_and_repeats_nothing(live: LiveServer) -> None:
    words = " ".join(f"word{i}" for i in range(60))
    async with live.client() as client:
        conversation = await _conversation(client)
        accepted = await _send(client, conversation["id"], words)
        first = await read_events(client, accepted["events_url"], limit=8)
        assert first[-1].event == "message.delta"
        rest = await read_events(client, accepted["events_url"], last_event_id=first[-1].id)
        assert rest[0].id is not None
        assert first[-1].id is not None
        assert id_order(rest[0].id) > id_order(first[-1].id)
        assert text_of(first) + text_of(rest) == words
        # `?after=` is the same resume for clients that cannot set headers.
        again = await read_events(client, f"{accepted['events_url']}?after={first[-1].id}")
        assert text_of(again) == text_of(rest)


async def test_cancel_stops_the_turn(live: LiveServer) -> None:
    words = " ".join(f"w{i}" for i in range(2000))
    async with live.client() as client:
        conversation = await _conversation(client)
        accepted = await _send(client, conversation["id"], words)
        started = await read_events(client, accepted["events_url"], limit=4)
        assert started[-1].event == "message.delta"
        response = await client.post(f"/api/turns/{accepted['turn_id']}/cancel")
        assert response.status_code == 202
        frames = await read_events(client, accepted["events_url"], last_event_id=started[-1].id)
        assert frames[-1].event == "turn.cancelled"
        partial = text_of(started) + text_of(frames)
        assert 0 < len(partial) < len(words)
        turn = await _turn_status(client, accepted["turn_id"], "cancelled")
        detail = (await client.get(f"/api/conversations/{conversation['id']}")).json()
        assert detail["messages"][-1]["content"] == partial
        assert detail["messages"][-1]["id"] == turn["assistant_message_id"]


async def test_event_streams_answer_through_the_apps_middleware(live: LiveServer) -> None:
    """The event streams skip the framework's layers (`chatplane.http.direct`); the app's own
    middleware still answers for them, their errors included."""
    async with live.client() as client:
        conversation = await _conversation(client)
        accepted = await _send(client, conversation["id"], "headers too")
        await read_events(client, accepted["events_url"])
        ended = await client.get(accepted["events_url"], headers={"x-request-id": "sse-req-1"})
        assert ended.status_code == 200
        assert ended.headers["content-type"].startswith("text/event-stream")
        assert ended.headers["x-request-id"] == "sse-req-1"
        assert ended.headers["x-content-type-options"] == "nosniff"
        missing = await client.get("/api/turns/no-such-turn/events")
        assert missing.status_code == 404
        assert missing.json()["code"] == "turn_not_found"
        assert missing.headers["x-content-type-options"] == "nosniff"


async def test_events_of_an_ended_turn_end_at_once(live: LiveServer) -> None:
    async with live.client() as client:
        conversation = await _conversation(client)
        accepted = await _send(client, conversation["id"], "done already")
        frames = await read_events(client, accepted["events_url"])
        again = await read_events(client, accepted["events_url"], last_event_id=frames[-1].id)
        assert [f.event for f in again] == ["turn.completed"]


async def test_conversations_list_pages_rename_and_delete(live: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live.base_url) as anonymous:
        login = await anonymous.post(
            "/api/auth/login", json={"email": live.email, "password": PASSWORD}
        )
    token = login.json()["access_token"]
    async with live.client(token) as client:
        created = [(await _conversation(client, title=f"c{i}"))["id"] for i in range(5)]
        seen: list[str] = []
        cursor = None
        while True:
            params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
            page = (await client.get("/api/conversations", params=params)).json()
            seen += [item["id"] for item in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert len(seen) == len(set(seen))
        assert seen.index(created[-1]) < seen.index(created[0])  # newest first
        assert set(created) <= set(seen)

        renamed = await client.patch(f"/api/conversations/{created[0]}", json={"title": "Plans"})
        assert renamed.status_code == 200
        assert renamed.json()["title"] == "Plans"
        assert (await client.delete(f"/api/conversations/{created[1]}")).status_code == 204
        gone = await client.get(f"/api/conversations/{created[1]}")
        assert gone.status_code == 404
        assert gone.json()["code"] == "conversation_not_found"


async def test_another_users_conversation_is_not_found(live: LiveServer) -> None:
    email = f"eve{time.monotonic_ns()}@example.com"
    await live.services.auth.create_user(email, PASSWORD, tenant_slug="other")
    _, eve_key = await live.services.auth.create_api_key(email, "eve")
    async with live.client() as ada, live.client(eve_key) as eve:
        conversation = await _conversation(ada, title="private")
        accepted = await _send(ada, conversation["id"], "secret")
        for method, path in [
            ("GET", f"/api/conversations/{conversation['id']}"),
            ("PATCH", f"/api/conversations/{conversation['id']}"),
            ("DELETE", f"/api/conversations/{conversation['id']}"),
            ("POST", f"/api/conversations/{conversation['id']}/messages"),
            ("GET", f"/api/turns/{accepted['turn_id']}"),
            ("GET", f"/api/turns/{accepted['turn_id']}/events"),
            ("POST", f"/api/turns/{accepted['turn_id']}/cancel"),
        ]:
            body = {"title": "x", "content": "x"} if method in ("PATCH", "POST") else None
            response = await eve.request(method, path, json=body)
            assert response.status_code == 404, (method, path, response.text)
        listed = (await eve.get("/api/conversations")).json()["items"]
        assert conversation["id"] not in [c["id"] for c in listed]
