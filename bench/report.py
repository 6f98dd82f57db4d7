"""Results: the machine, the design targets, the JSON file per scenario, the stdout table."""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from bench.scenarios import NATIVE, V1_MOCK, V1_PASSTHROUGH, BenchOptions

# The design targets (docs/benchmarks.md): CPU per 20-chunk streamed `/v1` request, p99
# first-token latency the embedded server adds at 32 concurrent streams, idle RSS.
TARGET_CPU_MS_PER_REQUEST = 0.85
TARGET_ADDED_TTFT_P99_MS = 5.0
TARGET_IDLE_RSS_MB = 100.0
TARGET_CHUNKS = 20
TARGET_CONCURRENCY = 32
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
        checks.append(
            _target(
                "ttft_p99_over_mock_ttft_ms",
                TARGET_ADDED_TTFT_P99_MS,
                result["ttft_overhead_ms"]["p99"],
                note,
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
    """A fixed-width table of every run (times in ms, CPU in ms per completed request)."""
    lines = [" ".join(title.rjust(width) for title, width in COLUMNS)]
    for scenario, result in results.items():
        for name, run in result["runs"].items():
            cpu = run["cpu_ms_per_request"]
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
                cpu.get("chatplane", cpu.get("bare")),
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
        elif scenario in (V1_MOCK, NATIVE):
            over = result["ttft_overhead_ms"]
            lines.append(
                f"{scenario}: ttft over the mock's own TTFT p50 {over['p50']:+.2f} ms, "
                f"p99 {over['p99']:+.2f} ms"
            )
        if "over_floor" in result:
            floor = result["over_floor"]
            lines.append(
                f"{scenario}: chatplane over the bare ASGI floor: "
                f"cpu {_cell(floor['cpu_ms_per_request'])} ms/req, "
                f"ttft p50 {floor['ttft_ms_p50']:+.2f} ms, p99 {floor['ttft_ms_p99']:+.2f} ms"
            )
        for name, run in result["runs"].items():
            machine = run["machine_cpu"]
            if (machine["other_cores"] or 0) > NOISY_CORES or (
                machine["steal_cores"] or 0
            ) > NOISY_CORES:
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
                f"  target {check['name']} <= {check['target']}: "
                f"{_cell(check['measured'])} {verdict}{note}"
            )
    return "\n".join(lines)


def server_lines(server: Mapping[str, Any], paths: Sequence[Path]) -> str:
    verdict = "met" if server["idle_rss_mb"] <= TARGET_IDLE_RSS_MB else "MISSED"
    lines = [
        f"chatplane pid {server['pid']}: ready in {server['ready_s']:.2f} s, "
        f"idle RSS {server['idle_rss_mb']:.1f} MB (target <= {TARGET_IDLE_RSS_MB}: {verdict})"
    ]
    lines += [f"wrote {path}" for path in paths]
    return "\n".join(lines)
