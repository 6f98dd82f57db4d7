"""The WebSocket channel `/api/ws` against a live server, with the `websockets` client: the
same events as SSE, several turns on one connection, resume with `after`, send and cancel,
errors with stable codes, authentication and tenant scoping, limits and the drain."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.api.conftest import Shape, shape_server
from tests.api.live import PASSWORD, LiveServer
from tests.api.sse import Frame, id_order, read_events, text_of
from tests.api.wsclient import (
    CHANNEL_PROTOCOL,
    as_tuples,
    bearer_protocol,
    channel,
    events_until_closed,
    expect,
    read_turns,
    receive,
    send,
)
from tests.providers.fakes import FakeOpenAI

_addresses = itertools.count(random.randrange(1, 2**16))


async def new_conversation(http: httpx.AsyncClient) -> str:
    response = await http.post("/api/conversations", json={})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def post_turn(http: httpx.AsyncClient, content: str) -> str:
    conversation_id = await new_conversation(http)
    response = await http.post(
        f"/api/conversations/{conversation_id}/messages", json={"content": content}
    )
    assert response.status_code == 202, response.text
    return str(response.json()["turn_id"])


async def refused(base_url: str, token: str | None, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    """The status and problem of a handshake the server refuses."""
    with pytest.raises(InvalidStatus) as failure:
        async with channel(base_url, token, **kwargs):
            pass
    response = failure.value.response
    return response.status_code, json.loads(response.body or b"{}")


async def test_send_streams_the_events_of_the_sse_stream(live: LiveServer) -> None:
    content = "hello over a websocket"
    async with live.client() as http, channel(live.base_url, live.api_key) as ws:
        conversation_id = await new_conversation(http)
        await send(ws, type="send", conversation_id=conversation_id, content=content)
        accepted = await expect(ws, "accepted")
        assert set(accepted) == {"type", "turn_id", "message_id"}
        turn_id = accepted["turn_id"]
        frames = (await read_turns(ws, {turn_id}))[turn_id]
        assert frames[0].event == "turn.queued"
        assert frames[-1].event == "turn.completed"
        assert text_of(frames) == content

        sse = await read_events(http, f"/api/turns/{turn_id}/events")
        assert as_tuples(frames) == as_tuples(sse)
        detail = (await http.get(f"/api/conversations/{conversation_id}")).json()
        assert [m["id"] for m in detail["messages"]] == [
            accepted["message_id"],
            frames[-1].data["message_id"],
        ]


async def test_one_connection_carries_two_turns_at_once(live: LiveServer) -> None:
    contents = [" ".join(f"{name}{i}" for i in range(30)) for name in ("left", "right")]
    async with live.client() as http, channel(live.base_url, live.api_key) as ws:
        conversations = [await new_conversation(http) for _ in contents]
        for conversation_id, content in zip(conversations, contents, strict=True):
            await send(ws, type="send", conversation_id=conversation_id, content=content)
        accepted: list[dict[str, Any]] = []
        early: list[dict[str, Any]] = []  # events of the first turn before the second answer
        while len(accepted) < 2:
            message = await receive(ws)
            (accepted if message["type"] == "accepted" else early).append(message)
        turn_ids = [message["turn_id"] for message in accepted]
        frames = await read_turns(ws, set(turn_ids), received=early)
        for turn_id, content in zip(turn_ids, contents, strict=True):
            assert text_of(frames[turn_id]) == content
            assert frames[turn_id][-1].event == "turn.completed"
            ids = [id_order(frame.id) for frame in frames[turn_id] if frame.id]
            assert ids == sorted(set(ids))


async def test_subscribe_after_resumes_without_gap_or_repeat(live: LiveServer) -> None:
    words = " ".join(f"word{i}" for i in range(60))
    async with live.client() as http:
        turn_id = await post_turn(http, words)
        async with channel(live.base_url, live.api_key) as first:
            await send(first, type="subscribe", turn_id=turn_id)
            head = (await read_turns(first, {turn_id}, limit=8))[turn_id]
        assert head[-1].event == "message.delta"
        async with channel(live.base_url, live.api_key) as second:
            await send(second, type="subscribe", turn_id=turn_id, after=head[-1].id)
            tail = (await read_turns(second, {turn_id}))[turn_id]
        assert tail[-1].event == "turn.completed"
        assert text_of(head) + text_of(tail) == words
        sse = await read_events(http, f"/api/turns/{turn_id}/events")
        assert as_tuples(head + tail) == as_tuples(sse)


async def test_cancel_stops_the_turn(live: LiveServer) -> None:
    words = " ".join(f"w{i}" for i in range(2000))
    async with live.client() as http, channel(live.base_url, live.api_key) as ws:
        await send(ws, type="send", conversation_id=await new_conversation(http), content=words)
        turn_id = (await expect(ws, "accepted"))["turn_id"]
        started = (await read_turns(ws, {turn_id}, limit=4))[turn_id]
        assert started[-1].event == "message.delta"
        await send(ws, type="cancel", turn_id=turn_id)
        rest = (await read_turns(ws, {turn_id}))[turn_id]
        assert rest[-1].event == "turn.cancelled"
        assert 0 < len(text_of(started + rest)) < len(words)
        assert (await http.get(f"/api/turns/{turn_id}")).json()["status"] == "cancelled"


async def test_bad_messages_get_errors_with_stable_codes(live: LiveServer) -> None:
    async with live.client() as http, channel(live.base_url, live.api_key) as ws:
        turn_id = await post_turn(http, "hi")

        async def error_for(message: str | bytes) -> dict[str, Any]:
            await ws.send(message)
            return await expect(ws, "error")

        assert (await error_for("not json"))["code"] == "invalid_message"
        assert (await error_for("[1, 2]"))["code"] == "invalid_message"
        assert (await error_for(b"\x00binary"))["code"] == "invalid_message"
        assert (await error_for('{"type": "dance"}'))["code"] == "unknown_type"
        assert (await error_for('{"no": "type"}'))["code"] == "unknown_type"
        missing = await error_for('{"type": "subscribe"}')
        assert (missing["code"], missing["field"]) == ("invalid_message", "turn_id")
        empty = await error_for(json.dumps({"type": "send", "conversation_id": "c", "content": ""}))
        assert (empty["code"], empty["field"]) == ("invalid_message", "content")
        unknown = await error_for('{"type": "subscribe", "turn_id": "nope"}')
        assert (unknown["code"], unknown["turn_id"]) == ("turn_not_found", "nope")
        assert (await error_for('{"type": "cancel", "turn_id": "nope"}'))["code"] == (
            "turn_not_found"
        )
        lost = await error_for(json.dumps({"type": "send", "conversation_id": "x", "content": "a"}))
        assert (lost["code"], lost["conversation_id"]) == ("conversation_not_found", "x")
        bad_id = await error_for(
            json.dumps({"type": "subscribe", "turn_id": turn_id, "after": "x"})
        )
        assert (bad_id["code"], bad_id["field"]) == ("invalid_event_id", "after")
        # Unsubscribing from nothing is no error: the next answer is the next message's.
        await send(ws, type="unsubscribe", turn_id="nope")
        assert (await error_for('{"type": "dance"}'))["code"] == "unknown_type"

        # Over CHATPLANE_MAX_REQUEST_KB (64 here): an error, then close code 1009.
        too_large = await error_for(json.dumps({"type": "send", "content": "x" * 70_000}))
        assert too_large["code"] == "message_too_large"
        with pytest.raises(ConnectionClosed) as closed:
            await receive(ws)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1009


async def test_handshakes_without_a_valid_credential_are_refused(live: LiveServer) -> None:
    status, problem = await refused(live.base_url, None)
    assert (status, problem["code"]) == (401, "unauthorized")
    status, _ = await refused(live.base_url, "cp_not-a-key")
    assert status == 401
    _, admin_only = await live.services.auth.create_api_key(
        live.email, "admin only", scopes=frozenset({"admin"})
    )
    status, problem = await refused(live.base_url, admin_only)
    assert (status, problem["code"]) == (403, "insufficient_scope")
    # A bearer token from a page of another site that CHATPLANE_CORS_ORIGINS does not list.
    status, problem = await refused(live.base_url, live.api_key, origin="https://evil.example")
    assert (status, problem["code"]) == (403, "origin_not_allowed")
    # The bearer subprotocol needs the channel's own next to it (browsers insist on one back).
    status, problem = await refused(
        live.base_url, None, subprotocols=[bearer_protocol(live.api_key)]
    )
    assert (status, problem["code"]) == (400, "subprotocol_required")


async def test_bearer_subprotocol_and_session_cookie_authenticate(live: LiveServer) -> None:
    async with channel(
        live.base_url, None, subprotocols=[CHANNEL_PROTOCOL, bearer_protocol(live.api_key)]
    ) as ws:
        assert ws.subprotocol == CHANNEL_PROTOCOL
        await send(ws, type="subscribe", turn_id="nope")
        assert (await expect(ws, "error"))["code"] == "turn_not_found"

    address = next(_addresses)
    async with httpx.AsyncClient(base_url=live.base_url) as browser:
        login = await browser.post(
            "/api/auth/login",
            json={"email": live.email, "password": PASSWORD},
            headers={"x-forwarded-for": f"10.77.{address // 250 % 250}.{address % 250}"},
        )
        assert login.status_code == 200, login.text
        cookie = f"chatplane_session={browser.cookies['chatplane_session']}"
    async with live.client() as http:
        turn_id = await post_turn(http, "from the web app")
    same_site = {"additional_headers": {"cookie": cookie}, "origin": live.base_url}
    async with channel(live.base_url, None, **same_site) as ws:
        await send(ws, type="subscribe", turn_id=turn_id)
        frames = (await read_turns(ws, {turn_id}))[turn_id]
        assert text_of(frames) == "from the web app"
    # Cross-site WebSocket hijacking: another site's page cannot ride on the cookie.
    status, problem = await refused(
        live.base_url, None, additional_headers={"cookie": cookie}, origin="https://evil.example"
    )
    assert (status, problem["code"]) == (403, "origin_not_allowed")


async def test_another_tenants_turn_is_not_found(live: LiveServer) -> None:
    email = f"eve.ws{random.randrange(10**9)}@example.com"
    await live.services.auth.create_user(email, PASSWORD, tenant_slug="other")
    _, eve_key = await live.services.auth.create_api_key(email, "eve")
    async with live.client() as ada:
        conversation_id = await new_conversation(ada)
        accepted = await ada.post(
            f"/api/conversations/{conversation_id}/messages", json={"content": "secret"}
        )
        turn_id = accepted.json()["turn_id"]
    async with channel(live.base_url, eve_key) as eve:
        await send(eve, type="subscribe", turn_id=turn_id)
        await send(eve, type="subscribe", turn_id=turn_id, after="0")
        await send(eve, type="cancel", turn_id=turn_id)
        await send(eve, type="send", conversation_id=conversation_id, content="mine now")
        answers = [await receive(eve) for _ in range(4)]
    assert [(a["type"], a["code"]) for a in answers] == [
        ("error", "turn_not_found"),
        ("error", "turn_not_found"),
        ("error", "turn_not_found"),
        ("error", "conversation_not_found"),
    ]
    async with live.client() as ada:
        frames = await read_events(ada, f"/api/turns/{turn_id}/events")
        assert frames[-1].event == "turn.completed"  # not cancelled by eve


# A server of its own with small limits, which the drain test may also drain.


@pytest.fixture(scope="module")
async def small(
    tmp_path_factory: pytest.TempPathFactory, fake_openai: FakeOpenAI
) -> AsyncIterator[LiveServer]:
    async with shape_server(
        Shape("embedded"),
        tmp_path_factory.mktemp("ws-small"),
        fake_openai,
        email="ws.small@example.com",
        ws_max_subscriptions=2,
        ws_message_burst=10,
        ws_message_rate_per_s=1.0,
    ) as server:
        yield server


async def test_subscriptions_per_connection_are_limited(small: LiveServer) -> None:
    long = " ".join(f"w{i}" for i in range(2000))
    async with small.client() as http, channel(small.base_url, small.api_key) as ws:
        turns = [await post_turn(http, long) for _ in range(3)]

        async def next_error() -> dict[str, Any]:
            while (message := await receive(ws))["type"] != "error":
                assert message["type"] == "event"
            return message

        await send(ws, type="subscribe", turn_id=turns[0])
        await send(ws, type="subscribe", turn_id=turns[1])
        await send(ws, type="subscribe", turn_id=turns[2])
        full = await next_error()
        assert (full["code"], full["turn_id"]) == ("too_many_subscriptions", turns[2])
        await send(ws, type="send", conversation_id=await new_conversation(http), content="x")
        assert (await next_error())["code"] == "too_many_subscriptions"
        # Subscribing again to a subscribed turn takes no new place.
        await send(ws, type="subscribe", turn_id=turns[1], after="0")
        await send(ws, type="unsubscribe", turn_id=turns[0])
        await send(ws, type="subscribe", turn_id=turns[2])
        async with asyncio.timeout(10):
            while (message := await receive(ws)).get("turn_id") != turns[2]:
                assert message["type"] == "event"
        assert message["type"] == "event"
        for turn_id in turns:
            assert (await http.post(f"/api/turns/{turn_id}/cancel")).status_code == 202


async def test_a_flood_of_messages_closes_the_connection(small: LiveServer) -> None:
    async with channel(small.base_url, small.api_key) as ws:
        for _ in range(15):  # the burst is 10
            await send(ws, type="unsubscribe", turn_id="nothing")
        assert (await expect(ws, "error"))["code"] == "too_many_messages"
        with pytest.raises(ConnectionClosed) as closed:
            await receive(ws)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1008


async def test_a_drain_closes_with_1012_and_the_client_resumes(small: LiveServer) -> None:
    words = " ".join(f"d{i}" for i in range(200))  # about a second at 5 ms a chunk
    drain = small.server.config.app.state.drain
    async with small.client() as http:
        turn_id = await post_turn(http, words)
        head: list[Frame] = []
        async with channel(small.base_url, small.api_key) as ws:
            await send(ws, type="subscribe", turn_id=turn_id)
            head += (await read_turns(ws, {turn_id}, limit=5))[turn_id]
            drain.start("test")
            try:
                rest, code = await events_until_closed(ws, turn_id)
                assert code == 1012
                head += rest  # what was sent before the close still counts
                # A connection that arrives while the server drains is sent on at once.
                async with channel(small.base_url, small.api_key) as late:
                    with pytest.raises(ConnectionClosed) as sent_on:
                        await receive(late)
                    assert sent_on.value.rcvd is not None
                    assert sent_on.value.rcvd.code == 1012
            finally:
                drain.stop()
        assert head[-1].event != "turn.completed"
        async with channel(small.base_url, small.api_key) as ws:
            await send(ws, type="subscribe", turn_id=turn_id, after=head[-1].id)
            tail = (await read_turns(ws, {turn_id}))[turn_id]
        assert text_of(head) + text_of(tail) == words
        sse = await read_events(http, f"/api/turns/{turn_id}/events")
        assert as_tuples(head + tail) == as_tuples(sse)
