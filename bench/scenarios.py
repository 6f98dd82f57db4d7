"""The scenarios: what each one starts, which requests it sends, what it records.

- `v1-mock`: `/v1/chat/completions` streams from the built-in `mock` model.
- `v1-passthrough`: the fake upstream measured directly (baseline), then through
  chatplane's passthrough; the difference is what the gateway adds.
- `native`: a native chat turn (conversation, message, SSE to `turn.completed`).
- `native-scaled`: the same turn against the scaled shape (Postgres, Redis, two API
  processes, two workers; `bench/scaled.py`).
- `sse-idle`: N idle SSE streams held by one embedded API process (`bench/sse_idle.py`).
- `limits`: what the rate, concurrency and budget checks add per request, in-process and on
  Redis: the limit service called directly, and `/v1` with the limits on vs off
  (`bench/limits.py`).
- `observability`: what the Prometheus HTTP metrics and the access log cost per request:
  `HttpMiddleware` called directly (in-process and multi-process metrics), and `/v1` with
  the access log off vs on (`bench/observability.py`).
- `knowledge`: knowledge bases on SQLite and Postgres: ingestion throughput, search latency
  at 1k-100k chunks, retrieval quality on the standard library's docstrings
  (`bench/knowledge.py`).

One embedded chatplane server (and the fake upstream, when the passthrough runs) serves
`v1-mock`, `v1-passthrough` and `native`; CPU time is read per measured phase, so scenarios
do not mix. `native-scaled`, `sse-idle`, `limits` and `observability` start (and stop) their
own processes; `knowledge` runs in this process on databases of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench.bare import start_bare
from bench.clients import ChatCompletionStream, NativeTurn
from bench.knowledge import KNOWLEDGE, KnowledgeOptions, measure_knowledge
from bench.limits import LIMITS, measure_limits
from bench.loadgen import RequestFn, Sample, client_session, run_load
from bench.observability import OBSERVABILITY, measure_observability
from bench.procs import ManagedProcess, SystemCpu, free_port, system_cpu
from bench.profile import Profiler
from bench.raw import start_raw
from bench.scaled import scaled_shape
from bench.server import IDLE_SETTLE_S, ChatplaneServer, ServerConfig, StartupStats
from bench.sse_idle import measure_idle_streams
from bench.stats import per_request_ms, raw_samples, server_first_bytes, summarize
from bench.upstream import UPSTREAM_MODEL, start_upstream, upstream_url

V1_MOCK = "v1-mock"
V1_PASSTHROUGH = "v1-passthrough"
NATIVE = "native"
NATIVE_SCALED = "native-scaled"
SSE_IDLE = "sse-idle"
# `all`: the scenarios that need nothing but this machine (no Postgres, no Redis).
SCENARIOS = (V1_MOCK, V1_PASSTHROUGH, NATIVE)
# The scenarios that run against the one shared embedded server.
EMBEDDED_SCENARIOS = SCENARIOS
# Named groups of scenarios besides `all`.
GROUPS: dict[str, tuple[str, ...]] = {"shapes": (NATIVE, NATIVE_SCALED)}
ALL_SCENARIOS = (*SCENARIOS, NATIVE_SCALED, SSE_IDLE, LIMITS, OBSERVABILITY, KNOWLEDGE)
MOCK_MODEL = "mock"
V1_ROUTE = "/v1/chat/completions"
FLOOR_RUN = "bare-asgi"
SOCKET_FLOOR_RUN = "socket"
# Starts a floor server: (workdir, chunks=, ttft_ms=, chunk_delay_ms=) -> (process, /v1 URL).
StartFloor = Callable[..., Awaitable[tuple[ManagedProcess, str]]]
KIB_PER_MB = 1024
# A run is saturated when every CPU of the machine, or one server process's single core,
# was busy at least this share of the time.
SATURATED_SHARE = 0.9
# A native run whose answers (p50) took longer than this factor of the mock's pacing, plus
# this slack for the requests around the stream, fell behind its streams.
FELL_BEHIND_FACTOR = 1.5
FELL_BEHIND_SLACK_MS = 100.0


@dataclass(frozen=True, slots=True)
class BenchOptions:
    concurrency: int = 32
    requests: int = 4000
    duration_s: float = 60.0
    chunks: int = 20
    ttft_ms: float = 20.0
    chunk_delay_ms: float = 5.0
    warmup: int = 100
    request_timeout_s: float = 30.0
    idle_settle_s: float = IDLE_SETTLE_S
    floor: bool = True
    raw_samples: bool = False
    profile_dir: Path | None = None
    streams: int = 5000  # sse-idle: idle SSE streams to open
    stream_batch: int = 250  # sse-idle: streams opened at once
    idle_window_s: float = 30.0  # sse-idle: seconds of idle CPU measured (2 keep-alives)

    def as_json(self) -> dict[str, Any]:
        values = asdict(self)
        values["profile_dir"] = str(self.profile_dir) if self.profile_dir else None
        return values


@dataclass
class BenchEnvironment:
    """The processes of one bench run (no embedded server when only `native-scaled` or
    `sse-idle` run: they start their own)."""

    workdir: Path
    server_or_none: ChatplaneServer | None = None
    startup: StartupStats | None = None
    upstream: ManagedProcess | None = None
    upstream_url: str | None = None

    @property
    def server(self) -> ChatplaneServer:
        if self.server_or_none is None:
            raise RuntimeError("this scenario needs the shared embedded server")
        return self.server_or_none

    @property
    def chatplane(self) -> ManagedProcess:
        return self.server.process


@contextlib.asynccontextmanager
async def bench_environment(
    options: BenchOptions, scenarios: tuple[str, ...], workdir: Path
) -> AsyncIterator[BenchEnvironment]:
    """Start the fake upstream (only if the passthrough runs) and then chatplane, so the
    server lists the upstream's models at start; stop both by PID at the end. Neither
    starts when no scenario needs them."""
    if not any(name in EMBEDDED_SCENARIOS for name in scenarios):
        yield BenchEnvironment(workdir)
        return
    async with contextlib.AsyncExitStack() as stack:
        upstream_port = free_port() if V1_PASSTHROUGH in scenarios else None
        config = ServerConfig(
            chunks=options.chunks,
            ttft_ms=options.ttft_ms,
            chunk_delay_ms=options.chunk_delay_ms,
            openai_base_url=upstream_url(upstream_port) if upstream_port else None,
        )
        server = ChatplaneServer(workdir, config)
        upstream: ManagedProcess | None = None
        if upstream_port is None:
            await server.prepare()
        else:
            # The CLI's user and key creation is the slow part of start-up: overlap it.
            starting = asyncio.create_task(
                start_upstream(
                    workdir,
                    port=upstream_port,
                    chunks=options.chunks,
                    ttft_ms=options.ttft_ms,
                    chunk_delay_ms=options.chunk_delay_ms,
                )
            )
            try:
                await server.prepare()
            finally:
                upstream = await starting
                stack.push_async_callback(upstream.stop)
        startup = await server.start(idle_settle_s=options.idle_settle_s)
        stack.push_async_callback(server.stop)
        yield BenchEnvironment(workdir, server, startup, upstream, config.openai_base_url)


async def measure(
    scenario: str,
    name: str,
    request: RequestFn,
    options: BenchOptions,
    processes: Mapping[str, ManagedProcess],
) -> dict[str, Any]:
    """Warm up (not recorded), then measure in steady state: CPU time per completed
    request of each process in `processes`, from /proc at the start and end of the
    measured part. With a profile directory, py-spy records the whole run."""
    before: dict[str, float] = {}
    system_before = system_cpu()
    server = processes.get("chatplane")
    log_from = 0

    def snapshot() -> None:
        nonlocal system_before, log_from
        before.update({key: process.cpu_seconds() for key, process in processes.items()})
        system_before = system_cpu()
        if server is not None:
            log_from = server.log_size()

    profiler = Profiler(options.profile_dir, f"{scenario}-{name}", server)
    async with client_session(options.concurrency) as session, profiler:
        result = await run_load(
            request,
            session,
            concurrency=options.concurrency,
            requests=options.requests,
            duration_s=options.duration_s,
            warmup=options.warmup,
            on_measure=snapshot,
            request_timeout_s=options.request_timeout_s,
        )
        after = {key: process.cpu_seconds() for key, process in processes.items()}
        system_after = system_cpu()
    if not before:
        raise RuntimeError(f"{scenario} {name}: the warm-up did not finish in time")
    summary = {"name": name, **summarize(result)}
    summary["cpu_ms_per_request"] = {
        key: per_request_ms(after[key] - before[key], summary["requests_ok"]) for key in processes
    }
    summary["cpu_utilization"] = {
        key: round((after[key] - before[key]) / result.elapsed_s, 3) if result.elapsed_s else None
        for key in processes
    }
    summary["machine_cpu"] = _machine_cpu(
        system_before,
        system_after,
        ours_s=sum(after[key] - before[key] for key in processes) + result.client_cpu_s,
        elapsed_s=result.elapsed_s,
    )
    summary["saturation"] = saturation(summary["cpu_utilization"], summary["machine_cpu"])
    if server is not None:
        first_bytes = server_first_bytes(server.log_lines(log_from), V1_ROUTE)
        if first_bytes is not None:
            summary["server_first_byte_ms"] = first_bytes
        summary["chatplane_rss_mb"] = round(server.memory_kib("VmRSS") / KIB_PER_MB, 1)
        summary["chatplane_peak_rss_mb"] = round(server.memory_kib("VmHWM") / KIB_PER_MB, 1)
    if profiler.summary is not None:
        summary["profile"] = profiler.summary
    if options.raw_samples:
        summary["samples"] = raw_samples(result)
    return summary


def _machine_cpu(
    before: SystemCpu, after: SystemCpu, *, ours_s: float, elapsed_s: float
) -> dict[str, float | None]:
    """Cores busy with work that is not this bench's (other processes on the machine) and
    cores stolen by the hypervisor during the phase: anything well above zero means the
    latencies of this run were disturbed."""
    if elapsed_s <= 0:
        return {"busy_cores": None, "other_cores": None, "steal_cores": None}
    busy = after.busy_s - before.busy_s
    return {
        "busy_cores": round(busy / elapsed_s, 3),
        "other_cores": round(max(0.0, busy - ours_s) / elapsed_s, 3),
        "steal_cores": round((after.steal_s - before.steal_s) / elapsed_s, 3),
    }


def saturation(
    utilization: Mapping[str, float | None], machine: Mapping[str, float | None]
) -> dict[str, Any]:
    """Whether the run saturated the machine (every CPU busy) or one of its server
    processes (one event loop, one core): if so, its latencies are queueing for the CPU,
    not what the server adds to a request, and the run is a throughput number."""
    cpus = os.cpu_count() or 1
    busy = machine["busy_cores"]
    measured = [(key, cores) for key, cores in utilization.items() if cores is not None]
    busiest, busiest_cores = max(measured, key=lambda item: item[1], default=(None, None))
    why = []
    if busy is not None and busy >= SATURATED_SHARE * cpus:
        why.append(f"the machine was busy {busy} of {cpus} cores")
    if busiest_cores is not None and busiest_cores >= SATURATED_SHARE:
        why.append(f"{busiest} used {busiest_cores} of its one core")
    return {
        "cpus": cpus,
        "machine_busy_cores": busy,
        "busiest_process": busiest,
        "busiest_process_cores": busiest_cores,
        "saturated": bool(why),
        "why": "; ".join(why) or None,
    }


def check_pacing(run: dict[str, Any], options: BenchOptions) -> None:
    """A native run is saturated too when its answers took much longer than the mock's own
    pacing: the server (or the machine it shares) could not keep up with the streams, even
    if no CPU counter reached the threshold (a contended machine gives each process its
    share)."""
    answer_ms = options.ttft_ms + options.chunks * options.chunk_delay_ms
    took_ms = run["total_ms"]["p50"]
    run["saturation"]["answer_ms"] = {"mock": round(answer_ms, 3), "p50": took_ms}
    if took_ms > FELL_BEHIND_FACTOR * answer_ms + FELL_BEHIND_SLACK_MS:
        why = run["saturation"]["why"]
        behind = (
            f"answers took {took_ms / 1000:.2f} s (p50) for the mock's {answer_ms / 1000:.2f} s"
        )
        run["saturation"]["saturated"] = True
        run["saturation"]["why"] = f"{why}; {behind}" if why else behind


def _ttft_overhead(
    run: Mapping[str, Any], ttft_ms: float, metric: str = "ttft_ms"
) -> dict[str, float]:
    """The measured first token (`metric`: the client's, or the server's own
    `server_first_byte_ms`) minus the mock's configured TTFT."""
    return {p: round(run[metric][p] - ttft_ms, 3) for p in ("p50", "p99")}


async def run_v1_mock(env: BenchEnvironment, options: BenchOptions) -> dict[str, Any]:
    client = ChatCompletionStream(
        env.server.base_url + "/v1",
        model=MOCK_MODEL,
        api_key=env.server.api_key,
        expected_chunks=options.chunks,
    )
    run = await measure(V1_MOCK, "chatplane", client, options, {"chatplane": env.chatplane})
    result: dict[str, Any] = {
        "runs": {"chatplane": run},
        "ttft_overhead_ms": _ttft_overhead(run, options.ttft_ms),
    }
    if "server_first_byte_ms" in run:  # the same, as the server itself saw it
        result["server_ttft_overhead_ms"] = _ttft_overhead(
            run, options.ttft_ms, "server_first_byte_ms"
        )
    if options.floor:
        for name, start, key, process_name in (
            (FLOOR_RUN, start_bare, "over_floor", "bare"),
            (SOCKET_FLOOR_RUN, start_raw, "over_socket_floor", "raw"),
        ):
            floor = await _measure_floor(env, options, name, start, process_name)
            result["runs"][name] = floor
            result[key] = {
                "cpu_ms_per_request": _difference(
                    run["cpu_ms_per_request"]["chatplane"],
                    floor["cpu_ms_per_request"][process_name],
                ),
                **{
                    f"{metric}_{p}": round(run[metric][p] - floor[metric][p], 3)
                    for metric in ("ttft_ms", "total_ms")
                    for p in ("p50", "p99")
                },
            }
    return result


async def _measure_floor(
    env: BenchEnvironment,
    options: BenchOptions,
    name: str,
    start: StartFloor,
    process_name: str,
) -> dict[str, Any]:
    """The same stream from a floor server: a bare ASGI app on the same uvicorn (what
    uvicorn needs), or a plain asyncio protocol (what the client and the machine need)."""
    process, base_url = await start(
        env.workdir,
        chunks=options.chunks,
        ttft_ms=options.ttft_ms,
        chunk_delay_ms=options.chunk_delay_ms,
    )
    try:
        client = ChatCompletionStream(
            base_url, model=MOCK_MODEL, api_key=None, expected_chunks=options.chunks
        )
        return await measure(V1_MOCK, name, client, options, {process_name: process})
    finally:
        await process.stop()


def _difference(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 4)


async def run_v1_passthrough(env: BenchEnvironment, options: BenchOptions) -> dict[str, Any]:
    if env.upstream is None or env.upstream_url is None:
        raise RuntimeError("the passthrough scenario needs the fake upstream")
    direct = ChatCompletionStream(
        env.upstream_url, model=UPSTREAM_MODEL, api_key=None, expected_chunks=options.chunks
    )
    through = ChatCompletionStream(
        env.server.base_url + "/v1",
        model=UPSTREAM_MODEL,
        api_key=env.server.api_key,
        expected_chunks=options.chunks,
    )
    runs = {
        "direct": await measure(
            V1_PASSTHROUGH, "direct", direct, options, {"upstream": env.upstream}
        ),
        "through": await measure(
            V1_PASSTHROUGH,
            "through",
            through,
            options,
            {"chatplane": env.chatplane, "upstream": env.upstream},
        ),
    }
    added = {
        f"{metric}_{p}": round(runs["through"][metric][p] - runs["direct"][metric][p], 3)
        for metric in ("ttft_ms", "total_ms")
        for p in ("p50", "p99")
    }
    return {"runs": runs, "added_latency_ms": added}


async def run_native(env: BenchEnvironment, options: BenchOptions) -> dict[str, Any]:
    client = NativeTurn(
        env.server.base_url,
        model=MOCK_MODEL,
        api_key=env.server.api_key,
        expected_chunks=options.chunks,
    )
    run = await measure(NATIVE, "chatplane", client, options, {"chatplane": env.chatplane})
    check_pacing(run, options)
    return {"runs": {"chatplane": run}, "ttft_overhead_ms": _ttft_overhead(run, options.ttft_ms)}


async def run_native_scaled(env: BenchEnvironment, options: BenchOptions) -> dict[str, Any]:
    """The native turn against two API processes and two workers on Postgres and Redis;
    turn i goes to API process i mod 2 (message and its events on the same process)."""
    async with scaled_shape(env.workdir / "scaled", options) as shape:
        clients = [
            NativeTurn(url, model=MOCK_MODEL, api_key=shape.api_key, expected_chunks=options.chunks)
            for url in shape.base_urls
        ]
        run = await measure(NATIVE_SCALED, "scaled", round_robin(clients), options, shape.processes)
        check_pacing(run, options)
        cpu = run["cpu_ms_per_request"]
        run["cpu_ms_per_request"]["total"] = (
            round(sum(cpu[k] for k in shape.processes), 4)
            if all(cpu[k] is not None for k in shape.processes)
            else None
        )
        run["rss_mb"] = {
            key: round(process.memory_kib("VmRSS") / KIB_PER_MB, 1)
            for key, process in shape.processes.items()
        }
        return {
            "server": shape.describe(),
            "runs": {"scaled": run},
            "ttft_overhead_ms": _ttft_overhead(run, options.ttft_ms),
        }


def round_robin(requests: Sequence[RequestFn]) -> RequestFn:
    """One request function that spreads calls over several (one per API process)."""
    turn = itertools.count()

    async def request(session: aiohttp.ClientSession) -> Sample:
        return await requests[next(turn) % len(requests)](session)

    return request


async def run_sse_idle(env: BenchEnvironment, options: BenchOptions) -> dict[str, Any]:
    return await measure_idle_streams(env.workdir / "sse-idle", options)


async def run_limits(env: BenchEnvironment, options: BenchOptions) -> dict[str, Any]:
    return await measure_limits(env.workdir / "limits", options, measure)


async def run_observability(env: BenchEnvironment, options: BenchOptions) -> dict[str, Any]:
    return await measure_observability(env.workdir / "observability", options, measure)


async def run_knowledge(env: BenchEnvironment, options: BenchOptions) -> dict[str, Any]:
    """Its own options (`python -m bench.knowledge --help`); here the defaults."""
    return await measure_knowledge(env.workdir / "knowledge", KnowledgeOptions())


ScenarioFn = Callable[[BenchEnvironment, BenchOptions], Awaitable[dict[str, Any]]]
RUNNERS: dict[str, ScenarioFn] = {
    V1_MOCK: run_v1_mock,
    V1_PASSTHROUGH: run_v1_passthrough,
    NATIVE: run_native,
    NATIVE_SCALED: run_native_scaled,
    SSE_IDLE: run_sse_idle,
    LIMITS: run_limits,
    OBSERVABILITY: run_observability,
    KNOWLEDGE: run_knowledge,
}
