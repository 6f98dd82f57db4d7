"""The scaled shape with real processes: two API processes on their own ports and two
workers, on Postgres and Redis.

Streams resume on the other API process, a worker killed with -9 loses no turn, a worker
stopped with SIGTERM hands its turn back at once, cancel reaches the worker from either API
process, and `serve --workers 2` serves."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest

from tests.api.sse import read_events, text_of
from tests.scale.procs import Cluster, Group, Proc

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


async def start_cluster(cluster: Cluster, **worker_env: str) -> tuple[Proc, Proc, list[Proc]]:
    """Two API processes on their own ports and two workers, all ready."""
    first, second = cluster.api("api-1"), cluster.api("api-2")
    workers = [cluster.worker(f"worker-{n}", **worker_env) for n in (1, 2)]
    await asyncio.gather(
        first.wait_ready(),
        second.wait_ready(),
        *[w.wait_for_log("worker_started") for w in workers],
    )
    return first, second, workers


async def running_on(workers: list[Proc], turn_id: str) -> tuple[Proc, Proc]:
    """The worker whose log shows it started the turn, and the other one."""
    deadline = time.monotonic() + 10
    while True:
        owners = [w for w in workers if turn_id in w.log()]
        if len(owners) == 1:
            other = next(w for w in workers if w is not owners[0])
            return owners[0], other
        assert time.monotonic() < deadline, "no worker logged the turn"
        await asyncio.sleep(0.05)


async def test_a_stream_resumes_on_another_api_process(shared: Group, shared_key: str) -> None:
    first, second = shared.first, shared.second
    async with (
        client(first.base_url, shared_key) as one,
        client(second.base_url, shared_key) as two,
    ):
        conversation_id, _, events_url = await start_turn(one)
        watcher = asyncio.create_task(read_events(two, events_url))
        head = await read_events(one, events_url, limit=len(WORDS.split()) // 2)
        assert head[-1].event == "message.delta"
        tail = await read_events(two, events_url, last_event_id=head[-1].id)
        assert tail[-1].event == "turn.completed"
        assert text_of(head) + text_of(tail) == WORDS
        # A client on the other process from the start saw the whole turn live.
        whole = await watcher
        assert text_of(whole) == WORDS
        assert await assistant_messages(one, conversation_id) == [WORDS]


async def test_a_killed_worker_loses_no_turn(cluster: Cluster, user_key: str) -> None:
    first, second, workers = await start_cluster(cluster)
    async with client(first.base_url, user_key) as one, client(second.base_url, user_key) as two:
        conversation_id, turn_id, events_url = await start_turn(one)
        head = await read_events(one, events_url, limit=6)
        assert head[-1].event == "message.delta"
        doomed, survivor = await running_on(workers, turn_id)
        doomed.kill()
        rest = await read_events(two, events_url, last_event_id=head[-1].id)
        kinds = [frame.event for frame in rest]
        assert kinds.count("turn.restarted") == 1
        assert kinds[-1] == "turn.completed"
        rerun = rest[kinds.index("turn.restarted") :]
        assert text_of(rerun) == WORDS
        assert await assistant_messages(two, conversation_id) == [WORDS]
        turn = (await two.get(f"/api/turns/{turn_id}")).json()
        assert turn["status"] == "completed"
        assert turn["attempts"] == 2
        assert turn_id in survivor.log()


async def test_sigterm_hands_a_running_turn_back_at_once(cluster: Cluster, user_key: str) -> None:
    first, _, workers = await start_cluster(cluster, CHATPLANE_DRAIN_TIMEOUT_S="0.2")
    async with client(first.base_url, user_key) as http:
        conversation_id, turn_id, events_url = await start_turn(http)
        head = await read_events(http, events_url, limit=6)
        leaving, staying = await running_on(workers, turn_id)
        started = time.monotonic()
        assert await leaving.terminate() in (0, -15)
        assert "worker_draining" in leaving.log()
        rest = await read_events(http, events_url, last_event_id=head[-1].id)
        # Handed back at once, not left to the visibility timeout.
        assert [f.event for f in rest].count("turn.restarted") == 1
        assert rest[-1].event == "turn.completed"
        assert text_of(rest[[f.event for f in rest].index("turn.restarted") :]) == WORDS
        assert time.monotonic() - started < 12
        assert await assistant_messages(http, conversation_id) == [WORDS]
        assert turn_id in staying.log()


async def test_cancel_reaches_a_turn_on_another_process(shared: Group, shared_key: str) -> None:
    first, second = shared.first, shared.second
    async with (
        client(first.base_url, shared_key) as one,
        client(second.base_url, shared_key) as two,
    ):
        conversation_id, turn_id, events_url = await start_turn(one)
        head = await read_events(one, events_url, limit=5)
        assert head[-1].event == "message.delta"
        cancelled = await two.post(f"/api/turns/{turn_id}/cancel")
        assert cancelled.status_code == 202
        rest = await read_events(one, events_url, last_event_id=head[-1].id)
        assert rest[-1].event == "turn.cancelled"
        partial = text_of(head) + text_of(rest)
        assert 0 < len(partial) < len(WORDS)
        assert (await one.get(f"/api/turns/{turn_id}")).json()["status"] == "cancelled"
        assert await assistant_messages(two, conversation_id) == [partial]


async def test_serve_with_two_api_processes(joining: Cluster, shared_key: str) -> None:
    api = joining.api("api-pair", "--workers", "2")
    await api.wait_ready()
    async with client(api.base_url, shared_key) as http:
        _, _, events_url = await start_turn(http, "hello from two processes")
        frames = await read_events(http, events_url)
        assert text_of(frames) == "hello from two processes"
    sdk = openai.AsyncOpenAI(base_url=f"{api.base_url}/v1", api_key=shared_key, max_retries=0)
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
