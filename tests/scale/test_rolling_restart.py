"""Graceful drain and rolling restarts of API processes, with real processes on Postgres and
Redis: SIGTERM ends a process's event streams (their clients resume on another process by
Last-Event-ID), refuses new model calls with a retryable 503, lets the calls in flight
finish, and exits; restarting every API process in turn under load loses no turn and no
event."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import httpx
import pytest

from tests.api.sse import TERMINAL, Frame, read_events, text_of
from tests.scale.procs import Cluster, Group, Proc
from tests.scale.test_processes import WORDS, assistant_messages, client, start_turn

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

LONG = " ".join(f"w{i}" for i in range(150))  # 150 chunks at 40 ms: a turn of about 6 s


async def read_until_cut(http: httpx.AsyncClient, url: str, after: str | None) -> list[Frame]:
    """Frames until a terminal event or until the server ends the stream (a drain)."""
    with contextlib.suppress(httpx.TransportError, AssertionError):  # the process went away
        return await read_events(http, url, last_event_id=after)
    return []


async def follow(bases: list[str], key: str, events_url: str) -> tuple[list[Frame], int]:
    """Follow a turn's events like a client behind a load balancer: when a stream ends
    before the turn does, reconnect (to whichever process is up) after the last event.
    Returns the frames and how many connections it took."""
    frames: list[Frame] = []
    deadline = time.monotonic() + 60
    attempt = 0
    while not frames or frames[-1].event not in TERMINAL:
        assert time.monotonic() < deadline, f"the turn never ended: {frames[-3:]}"
        base = bases[attempt % len(bases)]
        attempt += 1
        async with client(base, key) as http:
            after = frames[-1].id if frames else None
            frames += await read_until_cut(http, events_url, after)
        await asyncio.sleep(0.05)
    return frames, attempt


async def test_sigterm_drains_an_api_process(
    shared: Group, joining: Cluster, shared_key: str
) -> None:
    """Drains an API process of its own; the shared one is the other."""
    first, second = joining.api("api-draining"), shared.second
    await first.wait_ready()

    async with client(first.base_url, shared_key) as http:
        conversation_id, _, events_url = await start_turn(http)
        head = await read_events(http, events_url, limit=3)
        # A stream left open on the process that is about to drain.
        open_stream = asyncio.create_task(read_until_cut(http, events_url, head[-1].id))
        # A gateway call in flight (40 words, 40 ms apart): the drain waits for it.
        body = {
            "model": "mock-echo",
            "stream": True,
            "messages": [{"role": "user", "content": WORDS}],
        }
        async with http.stream("POST", "/v1/chat/completions", json=body) as call:
            pieces = call.aiter_text()
            chunks = [await anext(pieces)]
            await asyncio.sleep(0.2)
            assert first.process is not None
            first.process.terminate()  # SIGTERM
            await first.wait_for_log("drain_started")

            ready = await http.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["checks"]["draining"] == "yes"
            refused = await http.post(
                f"/api/conversations/{conversation_id}/messages", json={"content": "more"}
            )
            assert refused.status_code == 503
            assert refused.json()["code"] == "draining"
            assert refused.headers["retry-after"] == "1"
            new_call = await http.post("/v1/chat/completions", json=body)
            assert new_call.status_code == 503
            assert new_call.json()["error"]["code"] == "draining"

            chunks += [chunk async for chunk in pieces]
        cut = await open_stream

    streamed = "".join(chunks)
    assert streamed.rstrip().endswith("data: [DONE]")  # the call in flight finished
    words = [
        json.loads(line[6:])["choices"][0]["delta"].get("content", "")
        for line in streamed.splitlines()
        if line.startswith("data: {")
    ]
    assert "".join(words) == WORDS
    assert not cut or cut[-1].event not in TERMINAL  # ended by the drain, not by the turn
    assert await first.terminate(timeout_s=30) in (0, -15)
    assert "drain_handing_over" in first.log()

    # The client resumes on the other process after the last event it saw: nothing lost.
    seen = head + cut
    async with client(second.base_url, shared_key) as http:
        rest = await read_events(http, events_url, last_event_id=seen[-1].id)
        assert text_of(seen + rest) == WORDS
        assert rest[-1].event == "turn.completed"
        assert await assistant_messages(http, conversation_id) == [WORDS]


async def test_a_rolling_restart_under_load_loses_nothing(
    joining: Cluster, shared_key: str
) -> None:
    """API processes of its own (it stops them), the shared workers."""
    apis: list[Proc] = [joining.api("api-a"), joining.api("api-b")]
    # The new version's processes come up first (a surge, as a rolling deployment does), so
    # however long a process takes to start on a busy machine, the turns are still being
    # written when the old ones are stopped.
    successors: list[Proc] = [joining.api(f"{api.name}-new") for api in apis]
    await asyncio.gather(*[api.wait_ready() for api in apis + successors])
    bases = [api.base_url for api in apis]

    turns: list[tuple[str, str, str]] = []
    for n in range(6):
        async with client(bases[n % 2], shared_key) as http:
            turns.append(await start_turn(http, LONG))
    followers = [
        asyncio.create_task(follow(bases, shared_key, events_url)) for _, _, events_url in turns
    ]

    # Replace each API process in turn, as a deployment does: the new one joins the
    # balancer's list (on its own port), then the old one gets SIGTERM.
    for index, (old, new) in enumerate(zip(list(apis), successors, strict=True)):
        await asyncio.sleep(0.3)
        bases.append(new.base_url)
        assert old.process is not None
        old.process.terminate()
        assert await old.terminate(timeout_s=30) in (0, -15)
        bases.remove(old.base_url)
        apis[index] = new

    results = await asyncio.gather(*followers)
    assert any(connections > 1 for _, connections in results)  # streams were cut and resumed
    async with client(bases[0], shared_key) as http:
        for (conversation_id, _, _), (frames, _) in zip(turns, results, strict=True):
            assert frames[-1].event == "turn.completed"
            assert text_of(frames) == LONG  # every delta exactly once
            ids = [f.id for f in frames if f.id]
            assert len(ids) == len(set(ids))
            assert await assistant_messages(http, conversation_id) == [LONG]


async def test_a_drain_ends_at_its_deadline(cluster: Cluster, user_key: str) -> None:
    api = cluster.api("api-short", CHATPLANE_DRAIN_TIMEOUT_S="1")
    await api.wait_ready()
    body = {"model": "mock-echo", "stream": True, "messages": [{"role": "user", "content": LONG}]}
    async with (
        client(api.base_url, user_key) as http,
        http.stream("POST", "/v1/chat/completions", json=body) as call,
    ):
        pieces = call.aiter_text()
        await anext(pieces)
        assert api.process is not None
        began = time.monotonic()
        api.process.terminate()
        with contextlib.suppress(httpx.TransportError):
            async for _ in pieces:  # cut when the deadline passes
                pass
    await api.terminate(timeout_s=20)
    # The 6 s call was not waited for: a 1 s drain, then at most the server's short grace.
    assert time.monotonic() - began < 6
    assert '"unfinished_calls":1' in api.log()  # JSON lines: not a terminal
