"""The `response-cache` benchmark runs cleanly and writes its documented shape (no timing
assertions: the bench measures, this only checks that it works)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from bench.response_cache import KINDS, RESPONSE_CACHE
from bench.run import run_bench
from bench.scaled import redis_reachable
from bench.scenarios import BenchOptions

TINY = BenchOptions(requests=3, chunks=3, ttft_ms=5, chunk_delay_ms=1, idle_settle_s=0.1)


@pytest.mark.slow
async def test_the_response_cache_bench_measures_hits_and_misses(tmp_path: Path) -> None:
    missing = await redis_reachable()
    if missing is not None and os.environ.get("CI"):
        pytest.fail(f"the bench's Redis half needs the local Redis: {missing}")
    lines: list[str] = []

    results = await run_bench(
        RESPONSE_CACHE, TINY, results_dir=tmp_path, workdir=tmp_path / "work", echo=lines.append
    )

    document = results[RESPONSE_CACHE]
    assert document["errors"] == 0
    assert set(document["stores"]) == ({"memory"} if missing else {"memory", "redis"})
    for store in document["stores"].values():
        assert store["errors"] == 0, store["error_kinds"]
        assert store["requests_per_kind"] == TINY.requests
        assert set(store["latency_ms"]) == set(KINDS)
        assert all(store["latency_ms"][kind]["p50"] > 0 for kind in KINDS)
    assert _written(tmp_path)["scenario"] == RESPONSE_CACHE
    assert any(line.startswith(f"{RESPONSE_CACHE}: chatplane pid") for line in lines)


def _written(results_dir: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(
        next(results_dir.glob(f"{RESPONSE_CACHE}-*.json")).read_text()
    )
    return document
