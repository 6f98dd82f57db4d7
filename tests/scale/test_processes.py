"""The scaled shape with real processes: API processes and workers on Postgres and Redis.

Streams resume on another API process, a worker killed with -9 loses no turn, a worker
stopped with SIGTERM hands its turn back at once, and `serve --workers 2` serves."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest

from tests.api.sse import read_events, text_of
from tests.scale.procs import Cluster

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

WORDS = " ".join(f"w{i}" for i in range(40))  # 40 chunks at 40 ms: a turn of about 1.6 s


def client(base_url: str, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=base_url, headers={"authorization": f"Bearer {key}"}, timeout=30
    )


async def start_turn(api: httpx.AsyncClient, content: str = WORDS) -> tuple[str, str, str]:
    conversation = (await api.post("/api/conversations", json={})).json()
    accepted = await api.post(
        f"/api/conversations/{conversation['id']}/messages", json={"content": content}
    )
    assert accepted.status_code == 202, accepted.text
    body = accepted.json()
    return conversation["id"], body["turn_id"], body["events_url"]


async def assistant_messages(api: httpx.AsyncClient, conversation_id: str) -> list[str]:
    detail = (await api.get(f"/api/conversations/{conversation_id}")).json()
    return [m["content"] for m in detail["messages"] if m["role"] == "assistant"]


async def test_a_stream_resumes_on_another_api_process(cluster: Cluster, user_key: str) -> None:
    first, second = cluster.api("api-1"), cluster.api("api-2")
    cluster.worker("worker-1")
    await asyncio.gather(first.wait_ready(), second.wait_ready())
    async with client(first.base_url, user_key) as one, client(second.base_url, user_key) as two:
        conversation_id, _, events_url = await start_turn(one)
        watcher = asyncio.create_task(read_events(two, events_url))
        head = await read_events(one, events_url, limit=6)
        assert head[-1].event == "message.delta"
        tail = await read_events(two, events_url, last_event_id=head[-1].id)
        assert tail[-1].event == "turn.completed"
        assert text_of(head) + text_of(tail) == WORDS
        # A client on the other process from the start saw the whole turn live.
        whole = await watcher
        assert text_of(whole) == WORDS
        assert await assistant_messages(one, conversation_id) == [WORDS]


async def test_a_killed_worker_loses_no_turn(cluster: Cluster, user_key: str) -> None:
    api = cluster.api("api")
    doomed = cluster.worker("doomed")
    await api.wait_ready()
    await doomed.wait_for_log("worker_started")
    async with client(api.base_url, user_key) as http:
        conversation_id, turn_id, events_url = await start_turn(http)
        head = await read_events(http, events_url, limit=6)
        assert head[-1].event == "message.delta"
        doomed.kill()
        survivor = cluster.worker("survivor")
        rest = await read_events(http, events_url, last_event_id=head[-1].id)
        kinds = [frame.event for frame in rest]
        assert kinds.count("turn.restarted") == 1
        assert kinds[-1] == "turn.completed"
        rerun = rest[kinds.index("turn.restarted") :]
        assert text_of(rerun) == WORDS
        assert await assistant_messages(http, conversation_id) == [WORDS]
        turn = (await http.get(f"/api/turns/{turn_id}")).json()
        assert turn["status"] == "completed"
        assert turn["attempts"] == 2
        assert "worker_started" in survivor.log()


async def test_sigterm_hands_a_running_turn_back_at_once(cluster: Cluster, user_key: str) -> None:
    api = cluster.api("api")
    leaving = cluster.worker("leaving", CHATPLANE_DRAIN_TIMEOUT_S="0.2")
    await api.wait_ready()
    await leaving.wait_for_log("worker_started")
    async with client(api.base_url, user_key) as http:
        conversation_id, _, events_url = await start_turn(http)
        head = await read_events(http, events_url, limit=6)
        assert await leaving.terminate() in (0, -15)
        assert "worker_draining" in leaving.log()
        cluster.worker("staying")
        started = time.monotonic()
        rest = await read_events(http, events_url, last_event_id=head[-1].id)
        # Handed back, not left to the 2 s visibility timeout (the re-run itself takes ~1.6 s).
        assert [f.event for f in rest].count("turn.restarted") == 1
        assert rest[-1].event == "turn.completed"
        assert time.monotonic() - started < 12
        assert await assistant_messages(http, conversation_id) == [WORDS]


async def test_serve_with_two_api_processes(cluster: Cluster, user_key: str) -> None:
    api = cluster.api("api-pair", "--workers", "2")
    cluster.worker("worker")
    await api.wait_ready()
    async with client(api.base_url, user_key) as http:
        _, _, events_url = await start_turn(http, "hello from two processes")
        frames = await read_events(http, events_url)
        assert text_of(frames) == "hello from two processes"
    sdk = openai.AsyncOpenAI(base_url=f"{api.base_url}/v1", api_key=user_key, max_retries=0)
    async with sdk:
        answers = await asyncio.gather(
            *[
                sdk.chat.completions.create(
                    model="mock-echo", messages=[{"role": "user", "content": f"n{i}"}]
                )
                for i in range(8)
            ]
        )
    assert [a.choices[0].message.content for a in answers] == [f"n{i}" for i in range(8)]
    assert api.log().count("Started server process") == 2
