"""Smoke test of the bench itself: every scenario, tiny, against a real `chatplane serve`.

No timing assertions: the bench measures, the tests only check that it runs cleanly and
writes the documented result shape.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.clients import SseReader
from bench.run import run_bench
from bench.scenarios import SCENARIOS, BenchOptions
from bench.stats import percentile

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
    assert set(results["v1-mock"]["runs"]) == {"chatplane", "bare-asgi"}
    assert set(results["v1-passthrough"]["runs"]) == {"direct", "through"}
    assert "ttft_ms_p99" in results["v1-passthrough"]["added_latency_ms"]
    assert results["v1-passthrough"]["runs"]["through"]["cpu_ms_per_request"]["chatplane"]
    assert any(line.lstrip().startswith("v1-mock") for line in lines)


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
