"""The operations API across real processes (the scaled shape): two API processes and
two workers on Postgres and Redis announce themselves; either API process lists them all,
a drain shows on the other one, a worker stopped with SIGTERM leaves the list, and one
killed with -9 shows as stale."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from tests.ops.support import OPS_TOKEN, eventually
from tests.scale.conftest import cluster  # noqa: F401 - the fixture, used below
from tests.scale.procs import Cluster

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

INTERVAL_S = "0.3"  # heartbeats: stale after 0.9 s of silence, dropped after 3 s
OPS_ENV = {"CHATPLANE_OPS_TOKEN": OPS_TOKEN, "CHATPLANE_PRESENCE_INTERVAL_S": INTERVAL_S}


async def status(base_url: str) -> dict[str, Any]:
    async with httpx.AsyncClient(
        base_url=base_url, headers={"authorization": f"Bearer {OPS_TOKEN}"}, timeout=10
    ) as client:
        answer = await client.get("/api/ops/status")
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def by_pid(body: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {process["pid"]: process for process in body["processes"]}


async def test_every_process_is_listed_and_a_killed_worker_goes_stale(
    cluster: Cluster,  # noqa: F811 - the fixture imported above
) -> None:
    first, second = cluster.api("api-1", **OPS_ENV), cluster.api("api-2", **OPS_ENV)
    workers = [cluster.worker(f"worker-{n}", **OPS_ENV) for n in (1, 2)]
    await asyncio.gather(
        first.wait_ready(),
        second.wait_ready(),
        *[w.wait_for_log("worker_started") for w in workers],
    )
    pids = {p.name: p.process.pid for p in (first, second, *workers) if p.process}

    async def all_listed(api: str) -> dict[int, dict[str, Any]] | None:
        listed = by_pid(await status(api))
        fresh = {pid for pid, process in listed.items() if not process["stale"]}
        return listed if set(pids.values()) <= fresh else None

    for api in (first.base_url, second.base_url):
        listed = await eventually(lambda api=api: all_listed(api), what="all four listed")
        assert {listed[pids[name]]["kind"] for name in ("api-1", "api-2")} == {"api"}
        for name in ("worker-1", "worker-2"):
            worker = listed[pids[name]]
            assert worker["kind"] == "worker"
            assert worker["running_turns"] == 0
            assert worker["concurrency"] >= 1
            assert worker["draining"] is None
        assert listed[pids["api-1"]]["draining"] is False

    # A drain of api-1 shows on api-2 (announced at once, not at the next beat).
    async with httpx.AsyncClient(
        base_url=first.base_url, headers={"authorization": f"Bearer {OPS_TOKEN}"}, timeout=10
    ) as ops:
        assert (await ops.post("/api/ops/drain")).json()["draining"] is True
        seen = by_pid(await status(second.base_url))
        assert seen[pids["api-1"]]["draining"] is True
        assert (await ops.post("/api/ops/undrain")).json()["draining"] is False

    # SIGTERM: the worker withdraws its entry as it stops.
    assert await workers[1].terminate() == 0

    async def withdrawn() -> bool:
        return pids["worker-2"] not in by_pid(await status(first.base_url))

    await eventually(withdrawn, what="the stopped worker leaves the list")

    # kill -9: no goodbye; the entry ages, shows as stale, and is dropped later.
    workers[0].kill()

    async def stale() -> dict[str, Any] | None:
        process = by_pid(await status(second.base_url)).get(pids["worker-1"])
        return process if process is not None and process["stale"] else None

    dead = await eventually(stale, what="the killed worker shows as stale")
    assert dead["seen_s_ago"] > 0.9
    fresh = by_pid(await status(first.base_url))
    assert not fresh[pids["api-2"]]["stale"]
    assert not fresh[pids["api-1"]]["stale"]

    async def dropped() -> bool:
        return pids["worker-1"] not in by_pid(await status(first.base_url))

    await eventually(dropped, what="the stale entry is dropped")
