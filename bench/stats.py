"""Summaries of a run's samples: percentiles in milliseconds, rates, error counts."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson

from bench.loadgen import LoadResult

PERCENTILES = (50, 90, 99)
MAX_ERROR_KINDS = 10


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of already sorted values (0.0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def distribution_ms(values_s: Sequence[float]) -> dict[str, float]:
    ordered = sorted(values_s)
    summary = {f"p{p}": round(percentile(ordered, p) * 1000, 3) for p in PERCENTILES}
    summary["mean"] = round(sum(ordered) / len(ordered) * 1000, 3) if ordered else 0.0
    summary["max"] = round(ordered[-1] * 1000, 3) if ordered else 0.0
    return summary


def summarize(result: LoadResult) -> dict[str, Any]:
    """The JSON-ready summary of one measured phase (warm-up excluded)."""
    ok = [s for s in result.samples if s.error is None]
    errors = Counter(s.error for s in result.samples if s.error is not None)
    elapsed = result.elapsed_s
    chunks = [s.chunks for s in ok]
    summary: dict[str, Any] = {
        "requests": len(result.samples),
        "requests_ok": len(ok),
        "errors": sum(errors.values()),
        "error_kinds": dict(errors.most_common(MAX_ERROR_KINDS)),
        "elapsed_s": round(elapsed, 3),
        "stopped_by": result.stopped_by,
        "requests_per_s": round(len(ok) / elapsed, 2) if elapsed > 0 else 0.0,
        "ttft_ms": distribution_ms([s.ttft_s for s in ok if s.ttft_s is not None]),
        "total_ms": distribution_ms([s.total_s for s in ok]),
        "chunks_per_request": round(sum(chunks) / len(chunks), 2) if chunks else 0.0,
        "client_cpu_ms_per_request": round(result.client_cpu_s * 1000 / len(ok), 4) if ok else None,
    }
    setups = [s.setup_s for s in ok if s.setup_s is not None]
    if setups:
        summary["setup_ms"] = distribution_ms(setups)
    return summary


def server_first_bytes(log_lines: Iterable[bytes], route: str) -> dict[str, Any] | None:
    """The server's own view of `route`'s first token: `first_byte_ms` of its JSON access
    lines (from the request reaching the app to the first body byte handed to the ASGI
    server; `HttpMiddleware`), as a distribution; None when no line has it."""
    needle = b'"route":' + orjson.dumps(route)
    values: list[float] = []
    for line in log_lines:
        if needle not in line or not line.startswith(b"{"):
            continue
        record = orjson.loads(line)
        if record.get("event") == "request" and record.get("first_byte_ms") is not None:
            values.append(record["first_byte_ms"] / 1000)
    if not values:
        return None
    return {"lines": len(values), **distribution_ms(values)}


def raw_samples(result: LoadResult) -> list[list[Any]]:
    """Every sample as `[start_s, ttft_ms, total_ms, chunks, error]`, in start order."""
    rows = sorted(result.samples, key=lambda s: s.start_s)
    return [
        [
            round(s.start_s, 4),
            round(s.ttft_s * 1000, 3) if s.ttft_s is not None else None,
            round(s.total_s * 1000, 3),
            s.chunks,
            s.error,
        ]
        for s in rows
    ]


def per_request_ms(cpu_s: float, requests_ok: int) -> float | None:
    return round(cpu_s * 1000 / requests_ok, 4) if requests_ok else None


def difference(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 4)


def run_difference(
    on: Mapping[str, Any], off: Mapping[str, Any], *, extra: Sequence[str] = ()
) -> dict[str, Any]:
    """What a switch changed between two `/v1` runs of one server each: on minus off, for
    total and first-token p50/p99, the server's CPU per request, and the `extra` top-level
    numbers both runs carry."""
    added: dict[str, Any] = {
        f"{metric}_{p}": difference(on[metric][p], off[metric][p])
        for metric in ("total_ms", "ttft_ms")
        for p in ("p50", "p99")
    }
    added["cpu_ms_per_request"] = difference(
        on["cpu_ms_per_request"]["chatplane"], off["cpu_ms_per_request"]["chatplane"]
    )
    for key in extra:
        if key in on:
            added[key] = difference(on.get(key), off.get(key))
    return added
