"""`python -m bench.run` (`make bench`): run the scenarios, write JSON, print a table.

.venv/bin/python -m bench.run --scenario all --concurrency 32 --requests 4000
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench import cpus
from bench.cache import CACHE, run_cache
from bench.report import (
    machine_info,
    notes,
    server_lines,
    source_revision,
    table,
    targets,
    write_json,
)
from bench.response_cache import RESPONSE_CACHE, run_response_cache
from bench.scenarios import (
    ALL_SCENARIOS,
    GROUPS,
    RUNNERS,
    SCENARIOS,
    BenchOptions,
    bench_environment,
)

# Scenarios that start their own servers, registered beside those of `bench.scenarios`.
SCENARIO_RUNNERS = {**RUNNERS, RESPONSE_CACHE: run_response_cache, CACHE: run_cache}
SCENARIO_NAMES: tuple[str, ...] = (*ALL_SCENARIOS, RESPONSE_CACHE, CACHE)

RESULTS_DIR = Path(__file__).resolve().parent / "results"
KIB_PER_MB = 1024


async def run_bench(
    scenario: str,
    options: BenchOptions,
    *,
    results_dir: Path = RESULTS_DIR,
    workdir: Path | None = None,
    echo: Callable[[str], None] = print,
) -> dict[str, dict[str, Any]]:
    """Run one scenario, `all` or a group (`shapes`); returns each scenario's result
    document (also written to `results_dir/<scenario>-<timestamp>.json`), with the CPU
    pinning the caller applied (`cpus.pinned`), if any."""
    scenarios = SCENARIOS if scenario == "all" else GROUPS.get(scenario, (scenario,))
    if any(name not in SCENARIO_RUNNERS for name in scenarios):
        choices = ", ".join(("all", *GROUPS, *SCENARIO_NAMES))
        raise ValueError(f"unknown scenario {scenario!r}; one of {choices}")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    machine = machine_info()
    cpu_plan = cpus.applied()
    machine["pinning"] = cpu_plan.as_json() if cpu_plan is not None else None
    revision = source_revision()
    results: dict[str, dict[str, Any]] = {}
    paths: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="chatplane-bench-") as scratch:
        rundir = (workdir / f"run-{stamp}") if workdir else Path(scratch)
        rundir.mkdir(parents=True, exist_ok=True)
        if cpu_plan is not None:
            echo(
                f"pinned: the load generator on CPU {cpus.cpu_list(cpu_plan.load_generator)}, "
                f"the servers on CPU {cpus.cpu_list(cpu_plan.servers)}"
            )
        async with bench_environment(options, scenarios, rundir) as env:
            server: dict[str, Any] | None = None
            if env.server_or_none is not None and env.startup is not None:
                server = {
                    "pid": env.server.pid,
                    "shape": "embedded: one uvicorn process, SQLite, in-process broker",
                    "ready_s": round(env.startup.ready_s, 3),
                    "idle_rss_mb": round(env.startup.idle_rss_kib / KIB_PER_MB, 1),
                }
                echo(f"chatplane on {env.server.base_url}, idle RSS {server['idle_rss_mb']} MB")
            for name in scenarios:
                echo(f"running {name} ...")
                started = time.time()
                outcome = await SCENARIO_RUNNERS[name](env, options)
                document: dict[str, Any] = {
                    "scenario": name,
                    "timestamp": stamp,
                    "started_at": round(started, 3),
                    "machine": machine,
                    "revision": revision,
                    "options": options.as_json(),
                    "server": server,  # a scenario with processes of its own replaces it
                    **outcome,
                }
                document["targets"] = targets(name, document, options)
                results[name] = document
                paths.append(write_json(results_dir, name, stamp, document))
    if any(result["runs"] for result in results.values()):
        echo(table(results))
    echo(notes(results))
    echo(server_lines(server, paths, results))
    return results


def failed(results: dict[str, dict[str, Any]]) -> bool:
    """Any measured request (or idle stream) that failed."""
    return any(
        result.get("errors") or any(run["errors"] for run in result["runs"].values())
        for result in results.values()
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    defaults = BenchOptions()
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description="Load-test a fresh `chatplane serve` on 127.0.0.1 and write JSON results.",
    )
    parser.add_argument(
        "--scenario",
        choices=("all", *GROUPS, *SCENARIO_NAMES),
        default="all",
        help="all = v1-mock, v1-passthrough, native; shapes = native and native-scaled",
    )
    parser.add_argument("--concurrency", type=int, default=defaults.concurrency)
    parser.add_argument(
        "--requests", type=int, default=defaults.requests, help="measured requests per run"
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=defaults.duration_s,
        help="seconds per measured run at most (no new request after it)",
    )
    parser.add_argument("--chunks", type=int, default=defaults.chunks)
    parser.add_argument(
        "--ttft-ms",
        type=float,
        default=defaults.ttft_ms,
        help="the mock's and the fake upstream's time to first token",
    )
    parser.add_argument(
        "--chunk-delay-ms",
        type=float,
        default=defaults.chunk_delay_ms,
        help="the mock's and the fake upstream's gap between chunks",
    )
    parser.add_argument(
        "--warmup", type=int, default=defaults.warmup, help="unrecorded requests before each run"
    )
    parser.add_argument("--request-timeout", type=float, default=defaults.request_timeout_s)
    parser.add_argument(
        "--streams", type=int, default=defaults.streams, help="sse-idle: idle streams to open"
    )
    parser.add_argument(
        "--stream-batch",
        type=int,
        default=defaults.stream_batch,
        help="sse-idle: streams opened at once",
    )
    parser.add_argument(
        "--idle-window",
        type=float,
        default=defaults.idle_window_s,
        help="sse-idle: seconds of idle server CPU measured with every stream open",
    )
    parser.add_argument(
        "--cpus",
        choices=cpus.MODES,
        default=cpus.AUTO,
        help="auto: the load generator on the first CPU, the servers on the others; off: none",
    )
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep each run's data dir and logs under this directory",
    )
    parser.add_argument(
        "--no-floor",
        action="store_true",
        help="skip v1-mock's floor runs (bare ASGI and socket: the same stream without chatplane)",
    )
    parser.add_argument(
        "--raw-samples",
        action="store_true",
        help="also store every sample ([start_s, ttft_ms, total_ms, chunks, error]) in the JSON",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="DIR",
        help="record the server with py-spy during each run (slows it; not for numbers)",
    )
    args = parser.parse_args(argv)
    if args.concurrency < 1 or args.requests < 1 or args.duration <= 0 or args.chunks < 1:
        parser.error("--concurrency, --requests, --chunks >= 1 and --duration > 0 are required")
    if args.ttft_ms < 0 or args.chunk_delay_ms < 0 or args.warmup < 0:
        parser.error("--ttft-ms, --chunk-delay-ms and --warmup cannot be negative")
    if args.streams < 1 or args.stream_batch < 1 or args.idle_window <= 0:
        parser.error("--streams, --stream-batch >= 1 and --idle-window > 0 are required")
    return args


def options_from(args: argparse.Namespace) -> BenchOptions:
    return BenchOptions(
        concurrency=args.concurrency,
        requests=args.requests,
        duration_s=args.duration,
        chunks=args.chunks,
        ttft_ms=args.ttft_ms,
        chunk_delay_ms=args.chunk_delay_ms,
        warmup=args.warmup,
        request_timeout_s=args.request_timeout,
        floor=not args.no_floor,
        raw_samples=args.raw_samples,
        profile_dir=args.profile,
        streams=args.streams,
        stream_batch=args.stream_batch,
        idle_window_s=args.idle_window,
    )


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop when installed (it is, with uvicorn[standard]): a cheaper client."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    with cpus.pinned(cpus.plan(args.cpus)), asyncio.Runner(loop_factory=_loop_factory()) as runner:
        results = runner.run(
            run_bench(
                args.scenario,
                options_from(args),
                results_dir=args.results_dir,
                workdir=args.workdir.resolve() if args.workdir else None,
            )
        )
    return 1 if failed(results) else 0


if __name__ == "__main__":
    sys.exit(main())
