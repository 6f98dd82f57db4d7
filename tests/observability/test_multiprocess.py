"""Metrics of real processes: `serve --workers 2` on Postgres and Redis answers `/metrics`
with the sums of both processes from either of them, and a worker serves its own."""

from __future__ import annotations

import asyncio
import glob
import os
import re
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from prometheus_client.mmap_dict import MmapedDict

from tests.api.sse import read_events, text_of
from tests.observability.support import Samples, parse, value
from tests.scale.procs import Cluster, free_port

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

HEALTHZ = ("chatplane_http_requests_total", "/healthz")


def per_process(directory: Path, route: str) -> Counter[str]:
    """Requests of `route` counted by each process, from the processes' shared files."""
    counts: Counter[str] = Counter()
    for path in glob.glob(str(directory / "counter_*.db")):
        pid = os.path.basename(path).removeprefix("counter_").removesuffix(".db")
        for key, count, _, _ in MmapedDict.read_all_values_from_file(path):
            if '"chatplane_http_requests_total"' in key and f'"route": "{route}"' in key:
                counts[pid] += int(count)
    return counts


async def settled_total(directory: Path, route: str) -> int:
    """The total of `route` once it stopped changing for a moment."""
    total = sum(per_process(directory, route).values())
    while True:
        await asyncio.sleep(0.3)
        now = sum(per_process(directory, route).values())
        if now == total:
            return total
        total = now


async def scrape(base_url: str) -> Samples:
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:  # a new connection
        response = await http.get("/metrics")
    assert response.status_code == 200, response.text
    return parse(response.text)


async def fresh_get(base_url: str, path: str) -> None:
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
        assert (await http.get(path)).status_code == 200


async def test_any_process_serves_the_sums(cluster: Cluster, user_key: str, tmp_path: Path) -> None:
    files = tmp_path / "metrics-files"
    api = cluster.api("api-pair", "--workers", "2", PROMETHEUS_MULTIPROC_DIR=str(files))
    metrics_port = free_port()
    worker = cluster.worker("worker", CHATPLANE_WORKER_METRICS_PORT=str(metrics_port))
    await asyncio.gather(api.wait_ready(), worker.wait_for_log("worker_started"))
    # The first process may answer before the second has started.
    deadline = time.monotonic() + 30
    while len(pids := set(re.findall(r"Started server process \[(\d+)\]", api.log()))) < 2:
        assert time.monotonic() < deadline, api.log()
        await asyncio.sleep(0.1)

    # Requests on fresh connections until both processes have served some. A request is
    # counted just after its response went out, so counts are read once they settle.
    sent = await settled_total(files, "/healthz")  # the readiness checks
    deadline = time.monotonic() + 30
    while len(per_process(files, "/healthz")) < 2:
        assert time.monotonic() < deadline, per_process(files, "/healthz")
        await asyncio.gather(*[fresh_get(api.base_url, "/healthz") for _ in range(10)])
        sent += 10
    assert await settled_total(files, "/healthz") == sent
    assert set(per_process(files, "/healthz")) == pids

    # Every scrape, whichever process answers it, shows the sum.
    deadline = time.monotonic() + 30
    while len(per_process(files, "/metrics")) < 2:
        assert time.monotonic() < deadline, per_process(files, "/metrics")
        samples = await scrape(api.base_url)
        assert value(samples, HEALTHZ[0], route=HEALTHZ[1], method="GET", status="200") == sent

    # A live stream on one process shows in the gauges summed over both; and the turn's own
    # metrics are the worker's, on its port.
    async with httpx.AsyncClient(
        base_url=api.base_url, headers={"authorization": f"Bearer {user_key}"}, timeout=30
    ) as http:
        conversation = (await http.post("/api/conversations", json={})).json()
        words = " ".join(f"w{i}" for i in range(30))
        accepted = await http.post(
            f"/api/conversations/{conversation['id']}/messages", json={"content": words}
        )
        assert accepted.status_code == 202
        url = accepted.json()["events_url"]
        head = await read_events(http, url, limit=3)
        watcher = asyncio.create_task(read_events(http, url, last_event_id=head[-1].id))
        deadline = time.monotonic() + 10
        while value(await scrape(api.base_url), "chatplane_active_streams", kind="sse") != 1:
            assert time.monotonic() < deadline, "the open stream never showed"
        rest = await watcher
        assert text_of(head) + text_of(rest) == words

    on_worker = await scrape(f"http://127.0.0.1:{metrics_port}")
    model = {"model": "mock-echo"}
    assert value(on_worker, "chatplane_turn_first_token_seconds_count", **model) == 1
    assert (
        value(on_worker, "chatplane_turn_duration_seconds_count", outcome="completed", **model) == 1
    )
    assert value(on_worker, "chatplane_running_turns") == 0
    assert value(on_worker, "chatplane_queue_depth") == 0
    assert value(on_worker, "chatplane_db_pool_size") > 0
    on_api = await scrape(api.base_url)
    assert value(on_api, "chatplane_active_streams", kind="sse") == 0
    assert value(on_api, "chatplane_turn_first_token_seconds_count", **model) == 0
    assert value(on_api, "chatplane_db_pool_size") > value(on_worker, "chatplane_db_pool_size")
