"""A small async load generator on aiohttp: N concurrent workers issue requests until a
request count or a time limit is reached, whichever comes first, then stop by themselves.

A request is any coroutine function that takes the shared client session and returns a
`Sample` (it measures its own first token, since only it knows what one looks like).
Transport failures, time-outs and wrong answers (`ProtocolError`) become error samples;
anything else is a bug in the bench and propagates.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
from yarl import URL

LOOPBACK_HOST = "127.0.0.1"
DEFAULT_REQUEST_TIMEOUT_S = 30.0


class ProtocolError(Exception):
    """The server answered, but not as the scenario expects; `kind` names the failure."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


@dataclass(slots=True)
class Sample:
    """One request: seconds to the first content delta and to the end, content chunks."""

    ttft_s: float | None
    total_s: float
    chunks: int
    error: str | None = None
    setup_s: float | None = None  # work before the timed request (e.g. a new conversation)
    start_s: float = 0.0  # when it started, in seconds since the phase started


RequestFn = Callable[[aiohttp.ClientSession], Awaitable[Sample]]


@dataclass
class LoadResult:
    samples: list[Sample] = field(default_factory=list)
    elapsed_s: float = 0.0
    client_cpu_s: float = 0.0
    stopped_by: str = "requests"


def require_loopback(base_url: str) -> str:
    """The bench only ever targets this machine's loopback address."""
    host = URL(base_url).host
    if host != LOOPBACK_HOST:
        raise ValueError(f"the bench targets {LOOPBACK_HOST} only, not {host!r}")
    return base_url.rstrip("/")


def client_session(concurrency: int) -> aiohttp.ClientSession:
    """One pooled session per phase: keep-alive connections, as real clients use them."""
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=5.0),
        auto_decompress=False,
    )


async def run_load(
    request: RequestFn,
    session: aiohttp.ClientSession,
    *,
    concurrency: int,
    requests: int,
    duration_s: float,
    warmup: int = 0,
    on_measure: Callable[[], None] | None = None,
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
) -> LoadResult:
    """Issue `warmup` unrecorded requests, then up to `requests` recorded ones, with
    `concurrency` in flight throughout (so the measured phase starts in steady state,
    not with every worker starting at once). `on_measure` runs when the first recorded
    request is issued (to snapshot CPU counters). Each phase lasts at most `duration_s`:
    no new request starts after it, and one in flight gets `request_timeout_s` more."""
    if concurrency < 1 or requests < 0 or warmup < 0 or duration_s <= 0:
        raise ValueError("concurrency >= 1, requests, warmup >= 0, duration_s > 0 required")
    result = LoadResult()
    total = warmup + requests
    issued = 0
    now = time.perf_counter()
    measure_start: float | None = None
    cpu_start = 0.0
    deadline = now + duration_s
    last_end = now

    def start_measuring() -> float:
        nonlocal measure_start, cpu_start, deadline
        measure_start = time.perf_counter()
        deadline = measure_start + duration_s
        if on_measure is not None:
            on_measure()
        cpu_start = time.process_time()
        return measure_start

    if warmup == 0:
        start_measuring()

    async def worker() -> None:
        nonlocal issued, last_end
        while issued < total:
            if time.perf_counter() >= deadline:
                result.stopped_by = "duration" if measure_start is not None else "warmup"
                return
            recorded = issued >= warmup
            issued += 1
            phase_start: float | None = None
            if recorded:
                phase_start = measure_start if measure_start is not None else start_measuring()
            started = time.perf_counter()
            sample = await _one(request, session, request_timeout_s)
            if phase_start is not None:
                sample.start_s = started - phase_start
                result.samples.append(sample)
                last_end = max(last_end, time.perf_counter())

    workers = [asyncio.create_task(worker()) for _ in range(min(concurrency, max(total, 1)))]
    try:
        await asyncio.gather(*workers)
    finally:
        for task in workers:
            task.cancel()
    if measure_start is not None:
        result.elapsed_s = max(0.0, last_end - measure_start)
        result.client_cpu_s = time.process_time() - cpu_start
    return result


async def _one(request: RequestFn, session: aiohttp.ClientSession, timeout_s: float) -> Sample:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout_s):
            return await request(session)
    except ProtocolError as exc:
        kind = exc.kind
    except TimeoutError:
        kind = "timeout"
    except (aiohttp.ClientError, OSError) as exc:
        kind = type(exc).__name__
    return Sample(ttft_s=None, total_s=time.perf_counter() - started, chunks=0, error=kind)
