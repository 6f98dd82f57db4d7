"""The WebSocket channel across two real API processes on Postgres and Redis: a client that
leaves process A mid-turn, or that A sends away with 1012 while it drains, resubscribes
with `after` on process B and gets the rest of the turn with no gap and no repeat."""

from __future__ import annotations

import asyncio

import pytest

from tests.api.sse import Frame, id_order, read_events, text_of
from tests.api.wsclient import as_tuples, channel, events_until_closed, expect, read_turns, send
from tests.scale.procs import Cluster, Group
from tests.scale.test_processes import WORDS, client

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


async def assert_whole_turn(base_url: str, key: str, turn_id: str, frames: list[Frame]) -> None:
    assert frames[-1].event == "turn.completed"
    assert text_of(frames) == WORDS
    ids = [id_order(frame.id) for frame in frames if frame.id is not None]
    assert ids == sorted(set(ids))  # in order, none twice
    async with client(base_url, key) as http:
        sse = await read_events(http, f"/api/turns/{turn_id}/events")
    assert as_tuples(frames) == as_tuples(sse)  # none missing


async def test_a_subscription_resumes_on_the_other_api_process(
    shared: Group, shared_key: str
) -> None:
    first, second = shared.first, shared.second
    async with client(first.base_url, shared_key) as http:
        conversation_id = (await http.post("/api/conversations", json={})).json()["id"]
    async with channel(first.base_url, shared_key) as ws:
        await send(ws, type="send", conversation_id=conversation_id, content=WORDS)
        turn_id = (await expect(ws, "accepted"))["turn_id"]
        head = (await read_turns(ws, {turn_id}, limit=len(WORDS.split()) // 2))[turn_id]
    assert head[-1].event == "message.delta"  # left mid-turn
    async with channel(second.base_url, shared_key) as ws:
        await send(ws, type="subscribe", turn_id=turn_id, after=head[-1].id)
        tail = (await read_turns(ws, {turn_id}))[turn_id]
    await assert_whole_turn(second.base_url, shared_key, turn_id, head + tail)


async def test_a_draining_process_sends_its_clients_to_the_other(
    shared: Group, joining: Cluster, shared_key: str
) -> None:
    """Drains an API process of its own; the shared one is the other."""
    first, second = joining.api("api-draining"), shared.second
    # A generous deadline: a Python process starting on a busy machine.
    await first.wait_ready(timeout_s=90)
    async with client(first.base_url, shared_key) as http:
        conversation_id = (await http.post("/api/conversations", json={})).json()["id"]
    head: list[Frame] = []
    async with channel(first.base_url, shared_key) as ws:
        await send(ws, type="send", conversation_id=conversation_id, content=WORDS)
        turn_id = (await expect(ws, "accepted"))["turn_id"]
        head += (await read_turns(ws, {turn_id}, limit=5))[turn_id]
        stopping = asyncio.create_task(first.terminate())  # SIGTERM: a drain
        rest, code = await events_until_closed(ws, turn_id)
    assert code == 1012
    head += rest
    assert await stopping in (0, -15)  # uvicorn re-raises the SIGTERM it handled
    assert "drain_started" in first.log()
    assert head[-1].event != "turn.completed"
    async with channel(second.base_url, shared_key) as ws:
        await send(ws, type="subscribe", turn_id=turn_id, after=head[-1].id)
        tail = (await read_turns(ws, {turn_id}))[turn_id]
    await assert_whole_turn(second.base_url, shared_key, turn_id, head + tail)
