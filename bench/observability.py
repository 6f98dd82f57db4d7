"""`observability`: what the Prometheus HTTP metrics and the access log cost per request.

- **Direct**: `HttpMiddleware` around a minimal ASGI app (`plain`: 200 with a small body;
  `stream`: 200 with `--chunks` body chunks), called in-process by a tiny ASGI caller (no
  sockets, a no-op `send`), in four variants, interleaved in batches so drift on a shared
  machine hits them alike:
  - `bare`: the app alone;
  - `middleware`: `HttpMiddleware` with the access log off and its `HttpMetrics` replaced
    by one that records nothing (the middleware has no switch for metrics): request id,
    structlog context, security headers, the timing itself;
  - `metrics`: `HttpMiddleware(access_log=False)`, as `CHATPLANE_ACCESS_LOG=0` serves;
  - `metrics+log`: `HttpMiddleware(access_log=True)` with `configure_logging` of
    `Settings(log_json=True)`, as production logs: JSON lines to stderr, which is a file.
  It runs in a child process per Prometheus mode (`python -m bench.observability`),
  because prometheus-client picks in-memory or file-backed values when first imported:
  `single` (no `PROMETHEUS_MULTIPROC_DIR`) and `multiprocess` (a fresh directory, as
  `serve --workers N` sets). The child prints its result as JSON; a cProfile of the
  `metrics+log` stream calls shows where the time goes.
- **End to end**: `/v1/chat/completions` (mock model, streamed, as in `v1-mock`) through a
  real `chatplane serve` (the bench's limits-off settings) with `CHATPLANE_LOG_JSON=1` and
  `CHATPLANE_ACCESS_LOG=0`, then `=1`; `added` is on minus off. Metrics are always on in
  `serve`, so this part prices the access log only.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import math
import os
import pstats
import resource
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from bench.loadgen import RequestFn
from bench.procs import ManagedProcess, child_env, system_cpu
from bench.server import serving_v1
from bench.stats import percentile, run_difference

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Scope

    from bench.scenarios import BenchOptions

OBSERVABILITY = "observability"
VARIANTS = ("bare", "middleware", "metrics", "metrics+log")
BASELINE = "bare"
SHAPES = ("plain", "stream")
MODES = ("single", "multiprocess")
MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
# The direct part is cheap (tens of µs a call): more samples than a load run steadies p99.
DIRECT_REQUESTS_FACTOR = 5
# Calls per variant before the next variant takes its turn.
BATCH = 200
PROFILE_TOP = 20
PROFILED_PACKAGES = ("chatplane/", "structlog/", "prometheus_client/")
PROFILE_REQUESTS_MAX = 5000
CHILD_TIMEOUT_S = 600.0
MODEL = "mock"
# What each shape asks: an API route (no CSP header) and the `/v1` stream.
PLAIN_PATH = "/api/conversations"
STREAM_PATH = "/v1/chat/completions"
REQUEST_BODY = b'{"model":"mock","messages":[{"role":"user","content":"hi"}],"stream":true}'
PLAIN_BODY = b'{"ok":true}'
CHUNK_BODY = b'data: {"choices":[{"delta":{"content":"word "}}]}\n\n'
# What the access log writes per request (compact JSON, as orjson renders it), counted in
# its output to prove it ran.
ACCESS_LINE_MARK = b'"event":"request"'
KIB_PER_MB = 1024

MeasureFn = Callable[
    [str, str, RequestFn, "BenchOptions", Mapping[str, ManagedProcess]],
    Awaitable[dict[str, Any]],
]


async def measure_observability(
    workdir: Path, options: BenchOptions, measure: MeasureFn
) -> dict[str, Any]:
    """Direct in each Prometheus mode, then end to end with the access log off and on."""
    await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
    direct = {mode: await _direct(workdir / f"direct-{mode}", mode, options) for mode in MODES}
    runs: dict[str, dict[str, Any]] = {}
    servers: dict[str, dict[str, Any]] = {}
    for name, access_log in (("access-log-off", False), ("access-log-on", True)):
        runs[name], servers[name] = await _end_to_end(
            workdir / name, name, access_log=access_log, options=options, measure=measure
        )
    return {
        "server": {
            "shape": "embedded: one uvicorn process, SQLite, CHATPLANE_LOG_JSON=1, its output "
            "to a file; CHATPLANE_ACCESS_LOG=0 then =1",
            "servers": servers,
        },
        "runs": runs,
        "errors": sum(d["errors"] for d in direct.values()),
        "observability": {
            "direct": direct,
            "end_to_end": run_difference(runs["access-log-on"], runs["access-log-off"]),
        },
    }


# Direct: the parent side ----------------------------------------------------------------


async def _direct(workdir: Path, mode: str, options: BenchOptions) -> dict[str, Any]:
    """Run the harness in a child process (its stderr, the access log, to a file)."""
    await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
    env = child_env({})
    env.pop(MULTIPROC_DIR_ENV, None)
    metrics_dir: Path | None = None
    if mode == "multiprocess":
        metrics_dir = Path(tempfile.mkdtemp(prefix="prom-", dir=workdir))
        env[MULTIPROC_DIR_ENV] = str(metrics_dir)
    log_path = workdir / "access.log"
    requests = options.requests * DIRECT_REQUESTS_FACTOR
    argv = [sys.executable, "-m", "bench.observability"]
    argv += ["--requests", str(requests), "--warmup", str(options.warmup)]
    argv += ["--chunks", str(options.chunks), "--mode", mode]
    system_before = system_cpu()
    children_before = _children_cpu_s()
    started = time.perf_counter()
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            *argv,
            env=env,
            cwd=workdir,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
        )
        try:
            async with asyncio.timeout(CHILD_TIMEOUT_S):
                out, _ = await process.communicate()
        except TimeoutError:
            process.kill()
            await process.wait()
            raise
    elapsed = time.perf_counter() - started
    child_cpu_s = _children_cpu_s() - children_before
    system_after = system_cpu()
    if process.returncode != 0:
        tail = log_path.read_bytes()[-2000:].decode(errors="replace")
        raise RuntimeError(
            f"bench.observability --mode {mode} exited with {process.returncode}:\n{tail}"
        )
    result: dict[str, Any] = orjson.loads(out)
    lines = await asyncio.to_thread(_count_lines, log_path, ACCESS_LINE_MARK)
    result["access_log"] = {
        "path": str(log_path),
        "lines": lines,
        "lines_expected": result.pop("access_log_calls"),
        "bytes_per_line": round(log_path.stat().st_size / lines, 1) if lines else None,
    }
    busy = system_after.busy_s - system_before.busy_s
    steal = system_after.steal_s - system_before.steal_s
    # The child is the only thing this bench runs meanwhile: the rest is other work.
    result["machine_cpu"] = {
        "busy_cores": round(busy / elapsed, 3),
        "other_cores": round(max(0.0, busy - child_cpu_s) / elapsed, 3),
        "steal_cores": round(steal / elapsed, 3),
    }
    if metrics_dir is not None:
        result["multiproc_files"] = sorted(p.name for p in metrics_dir.glob("*.db"))
    return result


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _count_lines(path: Path, mark: bytes) -> int:
    with path.open("rb") as lines:
        return sum(1 for line in lines if mark in line)


# Direct: the harness (the child process) ------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Route:
    """What FastAPI's router leaves in `scope["route"]`: the metrics read its template."""

    path: str


class MinimalApp:
    """Reads the body, answers 200: one small body (`chunks == 0`) or `chunks` body parts
    and an empty last one."""

    def __init__(self, path: str, chunks: int) -> None:
        self.route = _Route(path)
        self.chunks = chunks

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        scope["route"] = self.route
        await receive()
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        if not self.chunks:
            await send({"type": "http.response.body", "body": PLAIN_BODY})
            return
        for _ in range(self.chunks):
            await send({"type": "http.response.body", "body": CHUNK_BODY, "more_body": True})
        await send({"type": "http.response.body", "body": b""})


@dataclass
class Caller:
    """A tiny in-process ASGI server: a fresh scope per call, the request body in one
    message, every message sent kept (for checking after the timed part)."""

    path: str
    method: str
    sent: list[Message] = field(default_factory=list)

    def scope(self) -> dict[str, Any]:
        self.sent = []
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": self.method,
            "scheme": "http",
            "path": self.path,
            "raw_path": self.path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [
                (b"host", b"127.0.0.1:8000"),
                (b"user-agent", b"bench"),
                (b"authorization", b"Bearer cp-bench"),
                (b"content-type", b"application/json"),
                (b"content-length", str(len(REQUEST_BODY)).encode()),
            ],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000),
            "state": {},
        }

    async def receive(self) -> Message:
        return {"type": "http.request", "body": REQUEST_BODY, "more_body": False}

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    def check(self, messages: int, *, middleware: bool) -> str | None:
        """None when the response was the expected one, else what was wrong."""
        if len(self.sent) != messages:
            return f"{len(self.sent)} messages instead of {messages}"
        start = self.sent[0]
        if start["type"] != "http.response.start" or start["status"] != 200:
            return f"started with {start}"
        names = {name for name, _ in start["headers"]}
        if middleware and b"x-request-id" not in names:
            return "no x-request-id"
        return None


def build_variants(chunks: int, path: str) -> dict[str, ASGIApp]:
    """The four apps of one shape (`chunks == 0`: the plain answer)."""
    from chatplane.http.client import ClientResolver
    from chatplane.http.middleware import HttpMiddleware
    from chatplane.observability.metrics import HttpMetrics
    from chatplane.settings import Settings

    class NoMetrics(HttpMetrics):
        def observe(self, scope: Mapping[str, Any], status: int, seconds: float) -> str:
            return ""

    settings = Settings(_env_file=None)
    app = MinimalApp(path, chunks)

    def middleware(*, access_log: bool) -> HttpMiddleware:
        return HttpMiddleware(
            app,
            max_body_bytes=settings.max_request_bytes,
            clients=ClientResolver(settings.trusted_proxies),
            access_log=access_log,
        )

    without_metrics = middleware(access_log=False)
    without_metrics.metrics = NoMetrics()
    return {
        "bare": app,
        "middleware": without_metrics,
        "metrics": middleware(access_log=False),
        "metrics+log": middleware(access_log=True),
    }


@dataclass
class VariantSamples:
    took_ns: list[int] = field(default_factory=list)
    cpu_ns: int = 0
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)

    def error(self, kind: str) -> None:
        self.errors += 1
        self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1


async def time_variants(
    apps: Mapping[str, ASGIApp], caller: Caller, *, messages: int, requests: int, warmup: int
) -> dict[str, VariantSamples]:
    """`warmup` unrecorded calls of each, then `requests` timed calls of each, `BATCH` at
    a time, the variants' order rotated every round."""
    samples = {name: VariantSamples() for name in apps}
    for app in apps.values():
        for _ in range(warmup):
            await app(caller.scope(), caller.receive, caller.send)
    order = list(apps)
    for round_number in range(math.ceil(requests / BATCH)):
        count = min(BATCH, requests - round_number * BATCH)
        shift = round_number % len(order)
        for name in order[shift:] + order[:shift]:
            await _batch(apps[name], caller, samples[name], count, messages, name != BASELINE)
    return samples


async def _batch(
    app: ASGIApp,
    caller: Caller,
    into: VariantSamples,
    count: int,
    messages: int,
    middleware: bool,
) -> None:
    clock = time.perf_counter_ns
    cpu_before = time.process_time_ns()
    for _ in range(count):
        scope = caller.scope()
        started = clock()
        try:
            await app(scope, caller.receive, caller.send)
        except Exception as exc:  # counted and reported: the run says it failed
            into.error(type(exc).__name__)
            continue
        took = clock() - started
        wrong = caller.check(messages, middleware=middleware)
        if wrong is None:
            into.took_ns.append(took)
        else:
            into.error(wrong)
    into.cpu_ns += time.process_time_ns() - cpu_before


def distribution_us(values_ns: Sequence[int]) -> dict[str, float]:
    ordered = sorted(values_ns)
    summary = {f"p{p}": round(percentile(ordered, p) / 1000, 2) for p in (50, 90, 99)}
    summary["mean"] = round(sum(ordered) / len(ordered) / 1000, 2) if ordered else 0.0
    summary["max"] = round(ordered[-1] / 1000, 2) if ordered else 0.0
    return summary


def _minus(a: Mapping[str, float], b: Mapping[str, float]) -> dict[str, float]:
    return {key: round(a[key] - b[key], 2) for key in ("p50", "p99", "max", "mean")}


def summarize_shape(samples: Mapping[str, VariantSamples]) -> dict[str, Any]:
    """Each variant's time per call (µs), and the differences: over `bare`, and each
    part's own (`metrics` over `middleware`, `log` over `metrics`). A difference of two
    percentiles, not a percentile of differences."""
    us = {name: distribution_us(s.took_ns) for name, s in samples.items()}
    variants = {
        name: {
            "requests_ok": len(s.took_ns),
            "errors": s.errors,
            "error_kinds": s.error_kinds,
            "us": us[name],
            "cpu_us_per_request": round(s.cpu_ns / 1000 / max(1, len(s.took_ns)), 2),
        }
        for name, s in samples.items()
    }
    return {
        "variants": variants,
        "over_bare_us": {name: _minus(us[name], us[BASELINE]) for name in VARIANTS[1:]},
        "parts_us": {
            "middleware": _minus(us["middleware"], us["bare"]),
            "metrics": _minus(us["metrics"], us["middleware"]),
            "access_log": _minus(us["metrics+log"], us["metrics"]),
        },
    }


async def profile_calls(app: ASGIApp, caller: Caller, requests: int) -> dict[str, Any]:
    """cProfile over `requests` calls, per call: the functions with the most own time, and
    the middleware's, structlog's and prometheus-client's by cumulative time (cProfile
    inflates both; read them as shares)."""
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(requests):
        await app(caller.scope(), caller.receive, caller.send)
    profiler.disable()
    entries: dict[Any, Any] = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    rows = [
        {
            "function": f"{_short(filename)}:{line}({function})",
            "calls_per_request": round(calls / requests, 2),
            "own_us_per_request": round(own * 1e6 / requests, 2),
            "cumulative_us_per_request": round(total * 1e6 / requests, 2),
        }
        for (filename, line, function), (_, calls, own, total, _) in entries.items()
    ]
    by_own = sorted(rows, key=lambda row: row["own_us_per_request"], reverse=True)
    ours = [row for row in rows if row["function"].startswith(PROFILED_PACKAGES)]
    by_total = sorted(ours, key=lambda row: row["cumulative_us_per_request"], reverse=True)
    return {
        "requests": requests,
        "top_own": by_own[:PROFILE_TOP],
        "top_cumulative": by_total[:PROFILE_TOP],
    }


def _short(filename: str) -> str:
    for marker in ("site-packages/", "/src/", "/lib/python"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


async def run_harness(mode: str, requests: int, warmup: int, chunks: int) -> dict[str, Any]:
    from chatplane.observability import metrics
    from chatplane.observability.logging import configure_logging
    from chatplane.settings import Settings

    multiprocess = metrics.MULTIPROC_DIR is not None
    if multiprocess != (mode == "multiprocess"):
        raise RuntimeError(f"--mode {mode} but PROMETHEUS_MULTIPROC_DIR is {metrics.MULTIPROC_DIR}")
    # As `serve` logs with CHATPLANE_LOG_JSON=1 (stderr is the parent's file).
    configure_logging(Settings(_env_file=None, log_json=True))
    shapes: dict[str, Any] = {}
    access_log_calls = 0
    profile: dict[str, Any] = {}
    for shape in SHAPES:
        shape_chunks = chunks if shape == "stream" else 0
        path = STREAM_PATH if shape == "stream" else PLAIN_PATH
        messages = shape_chunks + 2
        apps = build_variants(shape_chunks, path)
        caller = Caller(path, "POST")
        samples = await time_variants(
            apps, caller, messages=messages, requests=requests, warmup=warmup
        )
        shapes[shape] = {"chunks": shape_chunks, "path": path, **summarize_shape(samples)}
        access_log_calls += warmup + requests
        if shape == "stream":
            profiled = min(requests, PROFILE_REQUESTS_MAX)
            profile = await profile_calls(apps["metrics+log"], caller, profiled)
            access_log_calls += profiled
    errors = sum(v["errors"] for s in shapes.values() for v in s["variants"].values())
    return {
        "mode": mode,
        "multiproc_dir": metrics.MULTIPROC_DIR,
        "pid": os.getpid(),
        "requests_per_variant": requests,
        "warmup": warmup,
        "batch": BATCH,
        "errors": errors,
        "shapes": shapes,
        "profile_stream_metrics_log": profile,
        "access_log_calls": access_log_calls,
    }


def harness_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.observability")
    parser.add_argument("--mode", choices=MODES, required=True)
    parser.add_argument("--requests", type=int, required=True)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--chunks", type=int, default=20)
    args = parser.parse_args(argv)
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        result = runner.run(run_harness(args.mode, args.requests, args.warmup, args.chunks))
    sys.stdout.buffer.write(orjson.dumps(result))
    return 0


# End to end -------------------------------------------------------------------------------


async def _end_to_end(
    workdir: Path,
    name: str,
    *,
    access_log: bool,
    options: BenchOptions,
    measure: MeasureFn,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One `serve` with JSON logs and the access log off or on, loaded like `v1-mock`."""
    env = {"CHATPLANE_LOG_JSON": "1", "CHATPLANE_ACCESS_LOG": "1" if access_log else "0"}
    async with serving_v1(workdir, options, model=MODEL, extra_env=env) as target:
        run = await measure(OBSERVABILITY, name, target.client, options, target.processes)
    log_path = target.server.process.log_path
    run["access_log_lines"] = await asyncio.to_thread(_count_lines, log_path, ACCESS_LINE_MARK)
    described = {**target.described(), "access_log": access_log, "log": str(log_path)}
    return run, described


if __name__ == "__main__":
    sys.exit(harness_main())
