"""Idempotent message posts: the `Idempotency-Key` header of the message POST and the
`idempotency_key` of the WebSocket `send`, against a live server on SQLite and Postgres."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from chatplane.app import create_app
from chatplane.chat.models import Message, Turn
from tests.admin.support import add_user, new_org
from tests.api.live import LiveServer
from tests.api.sse import read_events, text_of
from tests.api.wsclient import channel, receive, send
from tests.conftest import make_settings

RACERS = 6


def messages_url(conversation_id: str) -> str:
    return f"/api/conversations/{conversation_id}/messages"


def new_key() -> str:
    return f"retry-{uuid.uuid4()}"


async def new_conversation(http: httpx.AsyncClient, **body: str) -> str:
    response = await http.post("/api/conversations", json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def post(
    http: httpx.AsyncClient, conversation_id: str, key: str | bytes, **body: Any
) -> httpx.Response:
    return await http.post(
        messages_url(conversation_id), json=body, headers={"idempotency-key": key}
    )


async def stored(live: LiveServer, conversation_id: str) -> tuple[list[str], int]:
    """The roles of a conversation's messages, oldest first, and its number of turns."""
    async with live.services.db.session() as session:
        roles = (
            await session.scalars(
                select(Message.role)
                .where(Message.conversation_id == conversation_id)
                .order_by(Message.seq)
            )
        ).all()
        turns = await session.scalar(
            select(func.count()).select_from(Turn).where(Turn.conversation_id == conversation_id)
        )
    return list(roles), int(turns or 0)


async def ended(http: httpx.AsyncClient, turn_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while True:
        turn: dict[str, Any] = (await http.get(f"/api/turns/{turn_id}")).json()
        if turn["status"] in ("completed", "failed", "cancelled"):
            return turn
        assert time.monotonic() < deadline, turn
        await asyncio.sleep(0.02)


async def test_a_retry_with_the_same_key_answers_the_first_post(live: LiveServer) -> None:
    key = new_key()
    async with live.client() as http:
        conversation_id = await new_conversation(http)
        first = await post(http, conversation_id, key, content="only once")
        assert first.status_code == 202, first.text
        again = await post(http, conversation_id, key, content="only once")
        assert again.status_code == 202, again.text
        assert again.json() == first.json()

        frames = await read_events(http, first.json()["events_url"])
        assert [f.event for f in frames].count("turn.completed") == 1
        assert text_of(frames) == "only once"
        # After the turn ended too, the key still answers the same.
        late = await post(http, conversation_id, key, content="only once")
        assert late.json() == first.json()
        detail = (await http.get(f"/api/conversations/{conversation_id}")).json()
    assert [(m["role"], m["content"]) for m in detail["messages"]] == [
        ("user", "only once"),
        ("assistant", "only once"),
    ]
    assert detail["messages"][0]["id"] == first.json()["message_id"]
    assert await stored(live, conversation_id) == (["user", "assistant"], 1)


async def test_the_same_key_with_another_body_is_refused(live: LiveServer) -> None:
    key = new_key()
    async with live.client() as http:
        conversation_id = await new_conversation(http)
        first = await post(http, conversation_id, key, content="one")
        assert first.status_code == 202, first.text
        for body in ({"content": "two"}, {"content": "one", "model": "mock"}):
            reused = await post(http, conversation_id, key, **body)
            assert reused.status_code == 409, reused.text
            assert reused.json()["code"] == "idempotency_key_reused"
        await ended(http, first.json()["turn_id"])
    assert await stored(live, conversation_id) == (["user", "assistant"], 1)


async def test_keys_are_scoped_to_the_conversation_and_posts_without_one_are_not_deduplicated(
    live: LiveServer,
) -> None:
    key = new_key()
    async with live.client() as http:
        left, right = await new_conversation(http), await new_conversation(http)
        a = await post(http, left, key, content="same")
        b = await post(http, right, key, content="same")
        assert a.status_code == b.status_code == 202, (a.text, b.text)
        assert a.json()["turn_id"] != b.json()["turn_id"]
        await ended(http, a.json()["turn_id"])
        plain = [await http.post(messages_url(left), json={"content": "plain"}) for _ in range(2)]
        assert [p.status_code for p in plain] == [202, 202]
        assert plain[0].json()["turn_id"] != plain[1].json()["turn_id"]
        for answer in (b, *plain):
            await ended(http, answer.json()["turn_id"])
    assert (await stored(live, left))[1] == 3
    assert (await stored(live, right))[1] == 1


async def test_another_users_key_on_a_conversation_is_not_found(live: LiveServer) -> None:
    key = new_key()
    org = await new_org(live)
    async with live.client() as http, live.client(org.owner.key) as eve:
        conversation_id = await new_conversation(http)
        first = await post(http, conversation_id, key, content="mine")
        assert first.status_code == 202, first.text
        stolen = await post(eve, conversation_id, key, content="mine")
        assert stolen.status_code == 404, stolen.text
        assert stolen.json()["code"] == "conversation_not_found"
        await ended(http, first.json()["turn_id"])


@pytest.mark.parametrize(
    "key",
    ["", "k" * 256, b"caf\xc3\xa9", "tab\there"],
    ids=["empty", "too-long", "not-ascii", "control"],
)
async def test_bad_keys_are_refused_with_a_stable_code(live: LiveServer, key: str | bytes) -> None:
    async with live.client() as http:
        conversation_id = await new_conversation(http)
        refused = await post(http, conversation_id, key, content="hi")
        assert refused.status_code == 400, refused.text
        assert refused.json()["code"] == "invalid_idempotency_key"
        longest = await post(http, conversation_id, "k" * 255, content="hi")
        assert longest.status_code == 202, longest.text
        await ended(http, longest.json()["turn_id"])
    assert (await stored(live, conversation_id))[1] == 1


async def test_racing_posts_with_one_key_store_one_message_and_release_their_budget(
    live: LiveServer,
) -> None:
    """Several posts with one key at once: one message and one turn, every caller gets the
    winner's answer, and the losers' budget reservations are given back."""
    org = await new_org(live)
    member = await add_user(live, org)
    async with live.client(org.owner.key) as admin:
        created = await admin.post(
            "/api/admin/budgets",
            json={"scope": "user", "subject_id": member.id, "period": "day", "limit_usd": 5.0},
        )
        assert created.status_code == 201, created.text
    key = new_key()
    async with live.client(member.key) as http:
        conversation_id = await new_conversation(http, model="gpt-fake")
        answers = await asyncio.gather(
            *[post(http, conversation_id, key, content="race me") for _ in range(RACERS)]
        )
        assert [a.status_code for a in answers] == [202] * RACERS, [a.text for a in answers]
        assert len({a.content for a in answers}) == 1
        turn = await ended(http, answers[0].json()["turn_id"])
        assert turn["status"] == "completed", turn
    assert await stored(live, conversation_id) == (["user", "assistant"], 1)
    async with live.client(org.owner.key) as admin:
        [budget] = (await admin.get("/api/admin/budgets")).json()
    assert budget["spent_usd"] > 0
    assert budget["reserved_usd"] == 0


async def test_a_websocket_send_repeated_with_its_key_is_stored_once(live: LiveServer) -> None:
    key = new_key()
    async with live.client() as http:
        conversation_id = await new_conversation(http)
        accepted: list[dict[str, Any]] = []
        for _ in range(2):  # the second as a client would after reconnecting
            async with channel(live.base_url, live.api_key) as ws:
                await send(
                    ws,
                    type="send",
                    conversation_id=conversation_id,
                    content="over the socket",
                    idempotency_key=key,
                )
                accepted.append(await first_of(ws, "accepted"))
        assert accepted[0] == accepted[1]
        async with channel(live.base_url, live.api_key) as ws:
            await send(
                ws,
                type="send",
                conversation_id=conversation_id,
                content="else",
                idempotency_key=key,
            )
            reused = await first_of(ws, "error")
            assert reused["code"] == "idempotency_key_reused"
            await send(
                ws, type="send", conversation_id=conversation_id, content="x", idempotency_key=""
            )
            invalid = await first_of(ws, "error")
            assert invalid["code"] == "invalid_idempotency_key"
        await ended(http, accepted[0]["turn_id"])
    assert await stored(live, conversation_id) == (["user", "assistant"], 1)


async def test_a_send_repeated_on_its_own_connection_does_not_repeat_the_events(
    live: LiveServer,
) -> None:
    """The connection that follows a turn already gets `accepted` again for a replayed send,
    and every event of the turn still once, in order (mid-answer and after the end)."""
    key = new_key()
    async with live.client() as http:
        conversation_id = await new_conversation(http)
        async with channel(live.base_url, live.api_key) as ws:
            command = {
                "type": "send",
                "conversation_id": conversation_id,
                "content": "once over the socket",
                "idempotency_key": key,
            }
            await send(ws, **command)
            received: list[dict[str, Any]] = []
            accepted = 0
            while not any(e["event"] == "turn.completed" for e in received):
                message = await receive(ws)
                if message["type"] == "accepted":
                    accepted += 1
                    if accepted == 1:
                        await send(ws, **command)  # while its events are on their way
                    continue
                assert message["type"] == "event", message
                received.append(message)
            await send(ws, **command)  # after the end: no events again either
            assert (await receive(ws))["type"] == "accepted"
            await send(ws, type="subscribe", turn_id="missing")  # a marker: the next message
            marker = await receive(ws)
    assert accepted == 2
    assert marker["type"] == "error"
    assert marker["code"] == "turn_not_found"
    ids = [event["id"] for event in received]
    assert len(ids) == len(set(ids))
    text = "".join(e["data"]["text"] for e in received if e["event"] == "message.delta")
    assert text == "once over the socket"


async def first_of(ws: Any, kind: str) -> dict[str, Any]:
    """The next message of this type, past the events of turns the channel follows."""
    while True:
        message = await receive(ws)
        if message["type"] == kind:
            return message
        assert message["type"] == "event", message


async def test_cross_origin_callers_may_send_the_header(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path, cors_origins=["https://app.example.com"]))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        preflight = await client.options(
            "/api/conversations/c1/messages",
            headers={
                "origin": "https://app.example.com",
                "access-control-request-method": "POST",
                "access-control-request-headers": "authorization, content-type, idempotency-key",
            },
        )
    assert preflight.status_code == 200, preflight.text
    allowed = preflight.headers["access-control-allow-headers"].lower()
    assert "idempotency-key" in allowed
