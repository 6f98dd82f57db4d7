"""Smoke test of the bench itself: every scenario, tiny, against a real `chatplane serve`.

No timing assertions: the bench measures, the tests only check that it runs cleanly and
writes the documented result shape.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from bench.clients import SseReader
from bench.limits import STORE_CALLS
from bench.observability import DIRECT_REQUESTS_FACTOR, MODES, SHAPES, VARIANTS
from bench.run import run_bench
from bench.scaled import PG_ADMIN_DSN, REDIS_URL, redis_reachable, services_reachable
from bench.scenarios import SCENARIOS, BenchOptions
from bench.stats import percentile, server_first_bytes

from bench import cpus

RUN_KEYS = {
    "requests",
    "requests_ok",
    "errors",
    "error_kinds",
    "requests_per_s",
    "ttft_ms",
    "total_ms",
    "chunks_per_request",
    "cpu_ms_per_request",
    "client_cpu_ms_per_request",
    "machine_cpu",
    "saturation",
}
DOCUMENT_KEYS = {"scenario", "timestamp", "machine", "revision", "options", "server", "runs"}


async def test_every_scenario_runs_without_errors(tmp_path: Path) -> None:
    options = BenchOptions(
        concurrency=2,
        requests=10,
        duration_s=30,
        chunks=5,
        ttft_ms=0,
        chunk_delay_ms=0,
        warmup=2,
        idle_settle_s=0.1,
    )
    lines: list[str] = []
    plan = cpus.plan("auto")  # as `python -m bench.run` runs it (None on one CPU)

    with cpus.pinned(plan):
        results = await run_bench("all", options, results_dir=tmp_path, echo=lines.append)

    assert set(results) == set(SCENARIOS)
    for scenario, document in results.items():
        assert set(document) >= DOCUMENT_KEYS
        assert document["server"]["idle_rss_mb"] > 0
        for run in document["runs"].values():
            assert set(run) >= RUN_KEYS
            assert run["errors"] == 0, run["error_kinds"]
            assert run["requests_ok"] == options.requests
            assert run["chunks_per_request"] == options.chunks
        assert _written(tmp_path, scenario)["scenario"] == scenario
    assert set(results["v1-mock"]["runs"]) == {"chatplane", "bare-asgi", "socket"}
    # The target is judged against the socket floor, as the passthrough's against the direct.
    over_socket = results["v1-mock"]["over_socket_floor"]
    added = [t for t in results["v1-mock"]["targets"] if t["name"] == "added_ttft_p99_ms"]
    assert [t["measured"] for t in added] == [over_socket["ttft_ms_p99"]]
    assert set(results["v1-passthrough"]["runs"]) == {"direct", "through"}
    assert "ttft_ms_p99" in results["v1-passthrough"]["added_latency_ms"]
    # CPU comes from /proc in clock ticks (10 ms): ten tiny requests may well read 0.
    assert results["v1-passthrough"]["runs"]["through"]["cpu_ms_per_request"]["chatplane"] >= 0
    assert any(line.lstrip().startswith("v1-mock") for line in lines)
    # The server's own first byte, from the access lines of the measured phase (the
    # warm-up's last requests may end in it).
    v1_mock = results["v1-mock"]
    own = v1_mock["runs"]["chatplane"]["server_first_byte_ms"]
    assert options.requests <= own["lines"] <= options.requests + options.concurrency
    assert 0 <= own["p50"] <= own["p99"] <= own["max"]
    assert set(v1_mock["server_ttft_overhead_ms"]) == {"p50", "p99"}
    assert v1_mock["machine"]["pinning"] == (plan.as_json() if plan else None)


TINY = BenchOptions(
    concurrency=2,
    requests=10,
    duration_s=30,
    chunks=5,
    ttft_ms=0,
    chunk_delay_ms=0,
    warmup=2,
    idle_settle_s=0.1,
)


async def test_native_scaled_runs_on_postgres_and_redis(tmp_path: Path) -> None:
    missing = await services_reachable()
    if missing is not None and not os.environ.get("CI"):
        pytest.skip(f"native-scaled needs a local Postgres and Redis: {missing}")
    lines: list[str] = []

    results = await run_bench(
        "shapes", TINY, results_dir=tmp_path, workdir=tmp_path / "work", echo=lines.append
    )

    scaled = results["native-scaled"]
    run = scaled["runs"]["scaled"]
    assert run["errors"] == 0, run["error_kinds"]
    assert run["requests_ok"] == TINY.requests
    assert run["chunks_per_request"] == TINY.chunks
    assert set(run["cpu_ms_per_request"]) == {"api1", "api2", "worker1", "worker2", "total"}
    assert set(scaled["server"]["pids"]) == {"api1", "api2", "worker1", "worker2"}
    assert "p99" in scaled["ttft_overhead_ms"]
    [target] = scaled["targets"]
    assert target["name"] == "scaled_ttft_p99_over_mock_ms"
    assert target["met"] is None  # two streams, not the target's 64: not judged
    assert "64 streams" in target["note"]
    assert _written(tmp_path, "native-scaled")["scenario"] == "native-scaled"
    assert any("embedded" in line and "scaled" in line for line in lines)
    # Everything it made is gone: the processes, the database, the Redis keys.
    for pid in scaled["server"]["pids"].values():
        assert not _running(pid)
    assert not await _database_exists(scaled["server"]["database"])
    assert not await _redis_keys(scaled["server"]["redis_prefix"])


async def test_sse_idle_holds_streams(tmp_path: Path) -> None:
    options = BenchOptions(streams=50, stream_batch=20, idle_window_s=1.0, idle_settle_s=0.1)

    results = await run_bench("sse-idle", options, results_dir=tmp_path, echo=lambda _: None)

    document = results["sse-idle"]
    idle = document["sse_idle"]
    assert document["errors"] == 0, idle["error_kinds"]
    assert idle["streams_open"] == idle["streams_open_after_idle"] == 50
    assert idle["kib_per_stream"] is not None
    assert idle["idle_cpu_cores"] >= 0
    assert {check["name"] for check in document["targets"]} >= {
        "idle_streams_held",
        "kib_per_stream",
    }
    assert not _running(document["server"]["pid"])
    assert _written(tmp_path, "sse-idle")["scenario"] == "sse-idle"


async def test_limits_runs_direct_and_end_to_end(tmp_path: Path) -> None:
    missing = await redis_reachable()
    if missing is not None and os.environ.get("CI"):
        pytest.fail(f"the limits scenario's Redis half needs the local Redis: {missing}")
    stores = ["memory"] if missing else ["memory", "redis"]
    lines: list[str] = []

    results = await run_bench(
        "limits", TINY, results_dir=tmp_path, workdir=tmp_path / "work", echo=lines.append
    )

    document = results["limits"]
    assert set(document) >= DOCUMENT_KEYS | {"limits", "targets"}
    assert set(document["runs"]) == {
        f"{store}-{limits}" for store in stores for limits in ("off", "on")
    }
    for run in document["runs"].values():
        assert set(run) >= RUN_KEYS
        assert run["errors"] == 0, run["error_kinds"]
        assert run["requests_ok"] == TINY.requests
        assert run["chunks_per_request"] == TINY.chunks
    limits = document["limits"]
    assert limits["redis_skipped"] == missing
    assert set(limits["direct"]) == set(stores)
    assert set(limits["end_to_end"]) == set(stores)
    for store in stores:
        for phase, concurrency in (("sequential", 1), ("concurrent", TINY.concurrency)):
            run = limits["direct"][store][phase]
            assert run["errors"] == 0, run["error_kinds"]
            assert run["requests_ok"] == TINY.requests
            assert run["concurrency"] == concurrency
            assert set(run["request_ms"]) >= {"p50", "p90", "p99", "max"}
            assert set(run["store_ms"]) >= set(STORE_CALLS)
        assert {"total_ms_p50", "total_ms_p99", "cpu_ms_per_request"} <= set(
            limits["end_to_end"][store]
        )
    [target] = document["targets"]
    assert target["name"] == "limits_request_p99_ms_redis"
    assert (target["measured"] is None) == (missing is not None)
    assert "limits memory end to end" in "\n".join(lines)
    assert _written(tmp_path, "limits")["scenario"] == "limits"
    # Every server is stopped, and nothing is left under the Redis prefixes it used.
    for server in document["server"]["servers"].values():
        assert not _running(server["pid"])
    if missing is None:
        redis = limits["direct"]["redis"]
        assert redis["sequential"]["redis_round_trips_per_request"] > 0
        prefixes = [redis["redis_prefix"]]
        prefixes += [s["redis_prefix"] for s in document["server"]["servers"].values()]
        for prefix in filter(None, prefixes):
            assert not await _redis_keys(prefix)


async def test_cache_runs_direct_and_end_to_end(tmp_path: Path) -> None:
    missing = await redis_reachable()
    variants = {"off", "local"} if missing else {"off", "local", "redis"}

    results = await run_bench(
        "cache", TINY, results_dir=tmp_path, workdir=tmp_path / "work", echo=lambda _: None
    )

    document = results["cache"]
    assert set(document) >= DOCUMENT_KEYS | {"cache", "targets"}
    assert set(document["runs"]) == {"cache-off", "cache-on"}
    for run in document["runs"].values():
        assert run["errors"] == 0, run["error_kinds"]
        assert run["requests_ok"] == TINY.requests
    cache = document["cache"]
    assert set(cache["direct"]) == variants
    for variant in cache["direct"].values():
        assert variant["lookups"] == TINY.requests
        assert variant["cpu_ms_per_lookup"] >= 0
    assert set(cache["saved_per_request"]) == {"cpu_ms", "total_ms_p50", "total_ms_p99"}
    for server in document["server"]["servers"].values():
        assert not _running(server["pid"])
    assert _written(tmp_path, "cache")["scenario"] == "cache"


async def test_observability_runs_direct_and_end_to_end(tmp_path: Path) -> None:
    lines: list[str] = []

    results = await run_bench(
        "observability", TINY, results_dir=tmp_path, workdir=tmp_path / "work", echo=lines.append
    )

    document = results["observability"]
    assert set(document) >= DOCUMENT_KEYS | {"observability", "targets"}
    assert document["errors"] == 0
    assert set(document["runs"]) == {"access-log-off", "access-log-on"}
    for run in document["runs"].values():
        assert set(run) >= RUN_KEYS
        assert run["errors"] == 0, run["error_kinds"]
        assert run["requests_ok"] == TINY.requests
        assert run["chunks_per_request"] == TINY.chunks
    # The access log is written only when it is on: a line per request, warm-up included.
    assert document["runs"]["access-log-off"]["access_log_lines"] == 0
    assert document["runs"]["access-log-on"]["access_log_lines"] >= TINY.warmup + TINY.requests
    block = document["observability"]
    assert set(block["direct"]) == set(MODES)
    for mode, direct in block["direct"].items():
        assert direct["mode"] == mode
        assert (direct["multiproc_dir"] is not None) == (mode == "multiprocess")
        assert direct["errors"] == 0
        assert set(direct["shapes"]) == set(SHAPES)
        for shape in direct["shapes"].values():
            assert set(shape["variants"]) == set(VARIANTS)
            for variant in shape["variants"].values():
                assert variant["errors"] == 0, variant["error_kinds"]
                assert variant["requests_ok"] == TINY.requests * DIRECT_REQUESTS_FACTOR
                assert set(variant["us"]) >= {"p50", "p99", "max"}
            assert set(shape["over_bare_us"]) == set(VARIANTS) - {"bare"}
            assert set(shape["parts_us"]) == {"middleware", "metrics", "access_log"}
        log = direct["access_log"]
        assert log["lines"] == log["lines_expected"] > 0
        assert direct["profile_stream_metrics_log"]["top_own"]
    assert block["direct"]["multiprocess"]["multiproc_files"]
    assert {"total_ms_p99", "ttft_ms_p99", "cpu_ms_per_request"} <= set(block["end_to_end"])
    [target] = document["targets"]
    assert target["name"] == "observability_request_p99_ms"
    assert target["measured"] is not None
    assert "observability end to end" in "\n".join(lines)
    assert _written(tmp_path, "observability")["scenario"] == "observability"
    for server in document["server"]["servers"].values():
        assert not _running(server["pid"])


def _running(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


async def _database_exists(name: str) -> bool:
    connection = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        return bool(await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name))
    finally:
        await connection.close()


async def _redis_keys(prefix: str) -> list[bytes]:
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        return [key async for key in client.scan_iter(match=f"{prefix}:*")]
    finally:
        await client.aclose()


def _written(results_dir: Path, scenario: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(next(results_dir.glob(f"{scenario}-*.json")).read_text())
    return document


def test_sse_reader_joins_events_split_across_reads() -> None:
    reader = SseReader()

    first = reader.feed(b'retry: 1000\n\nid: 1\nevent: message.delta\ndata: {"te')
    second = reader.feed(b'xt":"hi"}\n\ndata: [DONE]\n\n')

    assert first == []
    assert [(e.event, e.data) for e in second] == [
        ("message.delta", b'{"text":"hi"}'),
        ("message", b"[DONE]"),
    ]


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]

    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile([], 99) == 0.0


def test_server_first_bytes_reads_the_routes_access_lines() -> None:
    route = '"route":"/v1/chat/completions"'
    lines = [
        b"INFO: not a JSON line",
        ('{"event":"request",' + route + ',"first_byte_ms":20.5}').encode(),
        ('{"event":"request",' + route + ',"first_byte_ms":30.0}').encode(),
        ('{"event":"request",' + route + ',"first_byte_ms":null}').encode(),  # no body
        b'{"event":"request","route":"/v1/models","first_byte_ms":1.0}',
        ('{"event":"gateway_stream_failed",' + route + "}").encode(),
    ]

    found = server_first_bytes(lines, "/v1/chat/completions")

    assert found is not None
    assert (found["lines"], found["p50"], found["p99"], found["max"]) == (2, 20.5, 30.0, 30.0)
    assert server_first_bytes(lines[:1], "/v1/chat/completions") is None
