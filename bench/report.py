"""Results: the machine, the design targets, the JSON file per scenario, the stdout table."""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from bench.knowledge import KNOWLEDGE, knowledge_lines, knowledge_targets
from bench.limits import LIMITS
from bench.observability import OBSERVABILITY
from bench.scaled import scaled_targets
from bench.scenarios import (
    NATIVE,
    NATIVE_SCALED,
    SSE_IDLE,
    V1_MOCK,
    V1_PASSTHROUGH,
    BenchOptions,
)

# The design targets (docs/benchmarks.md): CPU per 20-chunk streamed `/v1` request, p99
# first-token latency the embedded server adds at 32 concurrent streams, idle RSS.
TARGET_CPU_MS_PER_REQUEST = 0.85
TARGET_ADDED_TTFT_P99_MS = 5.0
TARGET_IDLE_RSS_MB = 100.0
TARGET_CHUNKS = 20
TARGET_CONCURRENCY = 32
# One API process holds 5,000 open idle SSE streams, under 40 KB RSS each.
TARGET_SSE_STREAMS = 5000
TARGET_SSE_KIB_PER_STREAM = 40.0
# What the limit checks (per address, rates, a slot, a budget reservation) may add to one
# request, p99, with Redis on loopback.
TARGET_LIMITS_P99_MS = 1.0
# What the HTTP metrics and the access log may add to one request, p99 (`HttpMiddleware`
# over the bare app, called directly).
TARGET_OBSERVABILITY_P99_MS = 0.5
# Cores of other work (or hypervisor steal) during a run above which it is called noisy.
NOISY_CORES = 0.1


def machine_info() -> dict[str, Any]:
    model = ""
    mem_total_kib = 0
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_total_kib = int(line.split()[1])
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gb": round(mem_total_kib / 1024 / 1024, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def source_revision() -> dict[str, Any]:
    """The commit measured, and whether `src/` had local changes (untracked files too)."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=True
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip()

    changes = git("status", "--porcelain", "--", "src")
    return {
        "commit": git("rev-parse", "HEAD"),
        "src_modified": bool(changes) if changes is not None else None,
    }


def _target(name: str, target: float, measured: float | None, note: str = "") -> dict[str, Any]:
    met = None if measured is None else measured <= target
    entry: dict[str, Any] = {"name": name, "target": target, "measured": measured, "met": met}
    if note:
        entry["note"] = note
    return entry


def targets(
    scenario: str, result: Mapping[str, Any], options: BenchOptions
) -> list[dict[str, Any]]:
    """The design targets that this scenario's numbers speak to."""
    notes = []
    if options.chunks != TARGET_CHUNKS:
        notes.append(f"target stated for {TARGET_CHUNKS}-chunk streams")
    if options.concurrency != TARGET_CONCURRENCY:
        notes.append(f"target stated at {TARGET_CONCURRENCY} concurrent streams")
    note = "; ".join(notes)
    if scenario == SSE_IDLE:
        return _sse_targets(result)
    if scenario == LIMITS:
        return _limits_targets(result)
    if scenario == OBSERVABILITY:
        return _observability_targets(result)
    if scenario == KNOWLEDGE:
        return knowledge_targets(result)
    if scenario == NATIVE_SCALED:
        return scaled_targets(result, options)  # idle RSS is per process: not judged here
    checks = [
        _target("idle_rss_mb", TARGET_IDLE_RSS_MB, result["server"]["idle_rss_mb"]),
    ]
    runs = result["runs"]
    if scenario == V1_MOCK:
        run = runs["chatplane"]
        checks.append(
            _target(
                "cpu_ms_per_request",
                TARGET_CPU_MS_PER_REQUEST,
                run["cpu_ms_per_request"]["chatplane"],
                note,
            )
        )
        if "over_socket_floor" in result:
            # As for the passthrough: the first token through chatplane against the same
            # stream with no server work (the socket floor), with the same load generator.
            checks.append(
                _target(
                    "added_ttft_p99_ms",
                    TARGET_ADDED_TTFT_P99_MS,
                    result["over_socket_floor"]["ttft_ms_p99"],
                    note,
                )
            )
        else:
            # No floor run: the mock's configured TTFT is the reference, so the load
            # generator's own share counts against the server (an upper bound).
            upper = "; ".join(filter(None, [note, "upper bound: includes the load generator"]))
            checks.append(
                _target(
                    "ttft_p99_over_mock_ttft_ms",
                    TARGET_ADDED_TTFT_P99_MS,
                    result["ttft_overhead_ms"]["p99"],
                    upper,
                )
            )
    elif scenario == V1_PASSTHROUGH:
        checks.append(
            _target(
                "cpu_ms_per_request",
                TARGET_CPU_MS_PER_REQUEST,
                runs["through"]["cpu_ms_per_request"]["chatplane"],
                note,
            )
        )
        checks.append(
            _target(
                "added_ttft_p99_ms",
                TARGET_ADDED_TTFT_P99_MS,
                result["added_latency_ms"]["ttft_ms_p99"],
                note,
            )
        )
    return checks


def _sse_targets(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    idle = result["sse_idle"]
    note = ""
    if idle["streams_requested"] < TARGET_SSE_STREAMS:
        note = f"target stated at {TARGET_SSE_STREAMS} streams"
    held = idle["streams_open_after_idle"]
    return [
        _target("idle_rss_mb", TARGET_IDLE_RSS_MB, result["server"]["idle_rss_mb"]),
        {
            "name": "idle_streams_held",
            "target": TARGET_SSE_STREAMS,
            "measured": held,
            "op": ">=",
            "met": held >= TARGET_SSE_STREAMS and not result["errors"],
            **({"note": note} if note else {}),
        },
        _target("kib_per_stream", TARGET_SSE_KIB_PER_STREAM, idle["kib_per_stream"], note),
    ]


def _limits_targets(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """p99 of what the limits add to a request's path before its model is called (`admit`
    with the per-address check: one store call), on Redis, one request at a time; the
    `finish` after the response's last byte is in the note. n/a when Redis was not
    reachable."""
    redis = result["limits"]["direct"].get("redis")
    measured = redis["sequential"]["request_path_ms"]["p99"] if redis else None
    note = (
        "request path: admit incl. the per-address check (rates, slots, budget reservation; "
        "1 round trip), sequential, Redis on loopback"
    )
    if redis is None:
        note += f"; skipped: {result['limits']['redis_skipped']}"
    else:
        finish = redis["sequential"]["finish_ms"]["p99"]
        note += f"; finish after the response's last byte (not on the path): p99 {finish} ms"
    return [_target("limits_request_p99_ms_redis", TARGET_LIMITS_P99_MS, measured, note)]


def _observability_targets(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """p99 of `HttpMiddleware` with metrics and access log over the bare app, the worst
    of the shapes (plain, stream) and Prometheus modes (single, multiprocess)."""
    direct = result["observability"]["direct"]
    worst_us = max(
        shape["over_bare_us"]["metrics+log"]["p99"]
        for mode in direct.values()
        for shape in mode["shapes"].values()
    )
    note = "HttpMiddleware (metrics + JSON access log) over the bare app, direct, worst case"
    return [
        _target("observability_request_p99_ms", TARGET_OBSERVABILITY_P99_MS, worst_us / 1000, note)
    ]


def write_json(directory: Path, scenario: str, stamp: str, document: Mapping[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{scenario}-{stamp}.json"
    path.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n")
    return path


COLUMNS = (
    ("scenario", 15),
    ("run", 10),
    ("req/s", 8),
    ("ok", 6),
    ("err", 4),
    ("ttft p50", 9),
    ("ttft p99", 9),
    ("total p50", 10),
    ("total p99", 10),
    ("srv cpu/req", 12),
    ("up cpu/req", 11),
    ("cli cpu/req", 12),
)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """A fixed-width table of every run (times in ms, CPU in ms per completed request;
    for `native-scaled` the server CPU is summed over its four processes)."""
    lines = [" ".join(title.rjust(width) for title, width in COLUMNS)]
    for scenario, result in results.items():
        for name, run in result["runs"].items():
            cpu = run["cpu_ms_per_request"]
            server_cpu = next(
                (cpu[name] for name in ("chatplane", "bare", "raw", "total") if name in cpu), None
            )
            row = (
                scenario,
                name,
                run["requests_per_s"],
                run["requests_ok"],
                run["errors"],
                run["ttft_ms"]["p50"],
                run["ttft_ms"]["p99"],
                run["total_ms"]["p50"],
                run["total_ms"]["p99"],
                server_cpu,
                cpu.get("upstream"),
                run["client_cpu_ms_per_request"],
            )
            widths = (width for _, width in COLUMNS)
            cells = (_cell(value).rjust(width) for value, width in zip(row, widths, strict=True))
            lines.append(" ".join(cells))
    return "\n".join(lines)


def _verdict(met: bool | None) -> str:
    return {True: "met", False: "MISSED", None: "n/a"}[met]


def notes(results: Mapping[str, Mapping[str, Any]]) -> str:
    """Added latency, start-up numbers and every target, met or missed."""
    lines: list[str] = []
    for scenario, result in results.items():
        if scenario == V1_PASSTHROUGH:
            added = result["added_latency_ms"]
            lines.append(
                f"{scenario}: chatplane adds ttft p50 {added['ttft_ms_p50']:+.2f} ms, "
                f"p99 {added['ttft_ms_p99']:+.2f} ms; total p50 {added['total_ms_p50']:+.2f} ms, "
                f"p99 {added['total_ms_p99']:+.2f} ms"
            )
        elif scenario in (V1_MOCK, NATIVE, NATIVE_SCALED):
            over = result["ttft_overhead_ms"]
            lines.append(
                f"{scenario}: ttft over the mock's own TTFT p50 {over['p50']:+.2f} ms, "
                f"p99 {over['p99']:+.2f} ms"
            )
        if "server_ttft_overhead_ms" in result:
            own = result["server_ttft_overhead_ms"]
            lines.append(
                f"{scenario}: the server's own view (request in to first byte out, from its "
                f"access log): p50 {own['p50']:+.2f} ms, p99 {own['p99']:+.2f} ms over the mock"
            )
        for key, what in (
            ("over_floor", "chatplane over the bare ASGI floor (the platform over uvicorn)"),
            ("over_socket_floor", "chatplane over the socket floor (the embedded server)"),
        ):
            if key in result:
                floor = result[key]
                lines.append(
                    f"{scenario}: {what}: cpu {_cell(floor['cpu_ms_per_request'])} ms/req, "
                    f"ttft p50 {floor['ttft_ms_p50']:+.2f} ms, p99 {floor['ttft_ms_p99']:+.2f} ms"
                )
        if scenario == NATIVE_SCALED:
            run = result["runs"]["scaled"]
            cpu = ", ".join(f"{k} {_cell(v)}" for k, v in run["cpu_ms_per_request"].items())
            lines.append(f"{scenario}: CPU-ms per turn: {cpu}")
        if scenario == SSE_IDLE:
            lines.extend(_sse_lines(result))
        if scenario == LIMITS:
            lines.extend(limits_lines(result))
        if scenario == OBSERVABILITY:
            lines.extend(observability_lines(result))
        if scenario == KNOWLEDGE:
            lines.extend(knowledge_lines(result))
        measured = [(name, run["machine_cpu"]) for name, run in result["runs"].items()]
        if "sse_idle" in result:
            measured.append(("idle window", result["sse_idle"]["machine_cpu"]))
        for name, machine in measured:
            if _noisy(machine):
                lines.append(
                    f"  warning: {name}: other processes used {machine['other_cores']} cores "
                    f"and the hypervisor stole {machine['steal_cores']} during the run; "
                    "latencies are disturbed"
                )
        for check in result["targets"]:
            if check["name"] == "idle_rss_mb":
                continue  # the same server for every scenario: printed once, below
            verdict = _verdict(check["met"])
            note = f" ({check['note']})" if check.get("note") else ""
            lines.append(
                f"  target {check['name']} {check.get('op', '<=')} {check['target']}: "
                f"{_cell(check['measured'])} {verdict}{note}"
            )

    if NATIVE in results and NATIVE_SCALED in results:
        lines.extend(shapes_lines(results[NATIVE], results[NATIVE_SCALED]))
    return "\n".join(lines)


def limits_lines(result: Mapping[str, Any]) -> list[str]:
    """The direct runs (ms per request and per store call, Redis round trips) and what
    turning the limits on added end to end."""
    limits = result["limits"]
    lines = [
        f"{'limits direct':>24} {'req/s':>8} {'p50':>7} {'p90':>7} {'p99':>7} {'max':>7} "
        f"{'cpu/req':>8} {'trips':>6}"
    ]
    for store, phases in limits["direct"].items():
        for phase in ("sequential", "concurrent"):
            run = phases[phase]
            ms = run["request_ms"]
            label = f"{store} {phase} x{run['concurrency']}"
            lines.append(
                f"{label:>24} {_cell(run['requests_per_s']):>8} {ms['p50']:>7.3f} "
                f"{ms['p90']:>7.3f} {ms['p99']:>7.3f} {ms['max']:>7.2f} "
                f"{_cell(run['cpu_ms_per_request']):>8} "
                f"{_cell(run['redis_round_trips_per_request']):>6}"
            )
            if run["errors"]:
                lines.append(f"    errors: {run['error_kinds']}")
            if _noisy(run["machine_cpu"]):
                lines.append(
                    f"    warning: other processes used {run['machine_cpu']['other_cores']} "
                    "cores during this run; latencies are disturbed"
                )
    for store, phases in limits["direct"].items():
        calls = phases["sequential"]["store_ms"]
        parts = ", ".join(f"{name} {d['p50']:.3f}/{d['p99']:.3f}" for name, d in calls.items())
        lines.append(f"limits {store} store calls p50/p99 ms (sequential): {parts}")
        if "ping" in phases:
            sequential, ping = phases["sequential"], phases["ping"]
            per_request = {
                name: round(n / max(1, sequential["requests"]), 2)
                for name, n in sequential["redis_commands"].items()
            }
            lines.append(
                f"limits {store}: Redis commands per request {per_request}; Redis runs each "
                f"script in {_cell(sequential.get('redis_script_us_per_call'))} us; one PING "
                f"on the same client p50 {ping['round_trip_ms']['p50']:.3f} / p99 "
                f"{ping['round_trip_ms']['p99']:.3f} ms, {ping['cpu_ms_per_round_trip']} "
                "client CPU-ms"
            )
    if limits["redis_skipped"]:
        lines.append(f"limits: Redis runs skipped: {limits['redis_skipped']}")
    for store, added in limits["end_to_end"].items():
        lines.append(
            f"limits {store} end to end, on minus off: total p50 {_signed(added['total_ms_p50'])} "
            f"ms, p99 {_signed(added['total_ms_p99'])} ms; ttft p50 "
            f"{_signed(added['ttft_ms_p50'])} ms, p99 {_signed(added['ttft_ms_p99'])} ms; "
            f"server CPU {_signed(added['cpu_ms_per_request'])} ms/req"
        )
    return lines


def observability_lines(result: Mapping[str, Any]) -> list[str]:
    """Each direct variant's µs per call and what it adds over the bare app, the access
    log lines written, and the end-to-end difference."""
    block = result["observability"]
    lines = [
        f"{'observability direct, us':>34} {'p50':>7} {'p99':>7} {'max':>8} "
        f"{'+p50':>7} {'+p99':>7} {'cpu/req':>8}"
    ]
    for mode, direct in block["direct"].items():
        for shape, measured in direct["shapes"].items():
            for name, variant in measured["variants"].items():
                us = variant["us"]
                over = measured["over_bare_us"].get(name, {"p50": 0.0, "p99": 0.0})
                label = f"{mode} {shape} {name}"
                lines.append(
                    f"{label:>34} {us['p50']:>7.2f} {us['p99']:>7.2f} {us['max']:>8.2f} "
                    f"{over['p50']:>+7.2f} {over['p99']:>+7.2f} "
                    f"{variant['cpu_us_per_request']:>8.2f}"
                )
                if variant["errors"]:
                    lines.append(f"    errors: {variant['error_kinds']}")
        if _noisy(direct["machine_cpu"]):
            lines.append(
                f"    warning: other processes used {direct['machine_cpu']['other_cores']} "
                f"cores during the {mode} direct run; its tails are disturbed"
            )
        log = direct["access_log"]
        lines.append(
            f"observability {mode}: {log['lines']}/{log['lines_expected']} access log lines "
            f"written ({_cell(log['bytes_per_line'])} bytes each)"
        )
    added = block["end_to_end"]
    lines.append(
        "observability end to end, access log on minus off: total p50 "
        f"{_signed(added['total_ms_p50'])} ms, p99 {_signed(added['total_ms_p99'])} ms; ttft "
        f"p50 {_signed(added['ttft_ms_p50'])} ms, p99 {_signed(added['ttft_ms_p99'])} ms; "
        f"server CPU {_signed(added['cpu_ms_per_request'])} ms/req"
    )
    return lines


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.3f}"


def _noisy(machine: Mapping[str, Any]) -> bool:
    return (machine["other_cores"] or 0) > NOISY_CORES or (
        machine["steal_cores"] or 0
    ) > NOISY_CORES


def _sse_lines(result: Mapping[str, Any]) -> list[str]:
    idle = result["sse_idle"]
    return [
        f"{SSE_IDLE}: {idle['streams_open']}/{idle['streams_requested']} streams open in "
        f"{idle['open_s']:.1f} s ({_cell(idle['open_per_s'])}/s), "
        f"{idle['streams_open_after_idle']} still open after the idle window, "
        f"errors {result['errors']} {idle['error_kinds'] or ''}",
        f"{SSE_IDLE}: RSS {idle['rss_before_mb']} -> {idle['rss_after_mb']} MB "
        f"({_cell(idle['kib_per_stream'])} KB per stream), after the idle window "
        f"{idle['rss_after_idle_mb']} MB, peak {idle['peak_rss_mb']} MB",
        f"{SSE_IDLE}: idle server CPU {idle['idle_cpu_ms_per_s']} ms/s "
        f"({idle['idle_cpu_cores']} cores, {_cell(idle['idle_cpu_us_per_stream_per_s'])} "
        f"us per stream per s) over {idle['idle_window_s']:.0f} s, "
        f"keep-alive every {idle['keepalive_s']:.0f} s",
    ]


def shapes_lines(native: Mapping[str, Any], scaled: Mapping[str, Any]) -> list[str]:
    """`native` (embedded) and `native-scaled` side by side."""
    a, b = native["runs"]["chatplane"], scaled["runs"]["scaled"]
    rows = (
        ("turns/s", a["requests_per_s"], b["requests_per_s"]),
        ("TTFT p50 ms", a["ttft_ms"]["p50"], b["ttft_ms"]["p50"]),
        ("TTFT p99 ms", a["ttft_ms"]["p99"], b["ttft_ms"]["p99"]),
        (
            "TTFT p99 over mock ms",
            native["ttft_overhead_ms"]["p99"],
            scaled["ttft_overhead_ms"]["p99"],
        ),
        ("total p50 ms", a["total_ms"]["p50"], b["total_ms"]["p50"]),
        ("total p99 ms", a["total_ms"]["p99"], b["total_ms"]["p99"]),
        (
            "server CPU-ms/turn",
            a["cpu_ms_per_request"]["chatplane"],
            b["cpu_ms_per_request"]["total"],
        ),
        ("errors", a["errors"], b["errors"]),
    )
    lines = [f"{'shapes':>22} {'embedded':>10} {'scaled':>10}"]
    lines += [f"{label:>22} {_cell(x):>10} {_cell(y):>10}" for label, x, y in rows]
    return lines


def server_lines(
    server: Mapping[str, Any] | None,
    paths: Sequence[Path],
    results: Mapping[str, Mapping[str, Any]] | None = None,
) -> str:
    lines = []
    if server is not None:
        verdict = "met" if server["idle_rss_mb"] <= TARGET_IDLE_RSS_MB else "MISSED"
        lines.append(
            f"chatplane pid {server['pid']}: ready in {server['ready_s']:.2f} s, idle RSS "
            f"{server['idle_rss_mb']:.1f} MB (target <= {TARGET_IDLE_RSS_MB}: {verdict})"
        )
    for name, result in (results or {}).items():
        own = result["server"]
        if own is server or own is None:
            continue
        if name == NATIVE_SCALED:
            idle = ", ".join(f"{k} {v}" for k, v in own["idle_rss_mb"].items())
            lines.append(
                f"{name}: {own['shape']}; ready in {own['ready_s']:.2f} s; idle RSS MB: {idle}"
            )
        elif name in (LIMITS, OBSERVABILITY):
            lines.extend(
                f"{name} {run}: chatplane pid {each['pid']}: ready in {each['ready_s']:.2f} s, "
                f"idle RSS {each['idle_rss_mb']:.1f} MB"
                for run, each in own["servers"].items()
            )
        else:
            lines.append(
                f"{name}: chatplane pid {own['pid']}: ready in {own['ready_s']:.2f} s, "
                f"idle RSS {own['idle_rss_mb']:.1f} MB"
            )
    lines += [f"wrote {path}" for path in paths]
    return "\n".join(lines)
