"""Which runs the scaled shape's first-token target judges: 64 streams, not saturated."""

from __future__ import annotations

import os
from typing import Any

from bench.scaled import TARGET_TTFT_P99_OVER_MOCK_MS, scaled_targets
from bench.scenarios import BenchOptions, check_pacing, saturation

CPUS = os.cpu_count() or 1
PACED = BenchOptions(concurrency=64, chunks=200, chunk_delay_ms=20)


def _result(p99_over_mock_ms: float, *, machine_busy: float, busiest: float) -> dict[str, Any]:
    utilization = {"api1": busiest, "api2": 0.1, "worker1": 0.2, "worker2": None}
    machine = {"busy_cores": machine_busy, "other_cores": 0.0, "steal_cores": 0.0}
    return {
        "runs": {"scaled": {"saturation": saturation(utilization, machine)}},
        "ttft_overhead_ms": {"p50": 1.0, "p99": p99_over_mock_ms},
    }


def test_an_idle_machine_is_not_saturated() -> None:
    found = saturation({"chatplane": 0.3}, {"busy_cores": 0.4 * CPUS})

    assert found["saturated"] is False
    assert found["why"] is None
    assert found["busiest_process"] == "chatplane"


def test_a_busy_machine_or_one_full_process_is_saturated() -> None:
    machine = saturation({"chatplane": 0.3}, {"busy_cores": float(CPUS)})
    process = saturation({"api1": 0.2, "worker1": 0.95}, {"busy_cores": 0.5})

    assert machine["saturated"] is True
    assert "machine" in machine["why"]
    assert process["saturated"] is True
    assert "worker1" in process["why"]


def test_a_paced_run_at_64_streams_is_judged() -> None:
    under = scaled_targets(_result(4.0, machine_busy=0.5, busiest=0.3), PACED)
    over = scaled_targets(_result(25.0, machine_busy=0.5, busiest=0.3), PACED)

    assert under[0]["met"] is True
    assert over[0]["met"] is False
    assert over[0]["target"] == TARGET_TTFT_P99_OVER_MOCK_MS
    assert "64 streams open at once" in over[0]["note"]


def test_a_saturated_run_is_not_judged() -> None:
    [target] = scaled_targets(_result(3000.0, machine_busy=float(CPUS), busiest=0.5), PACED)

    assert target["met"] is None
    assert "saturated" in target["note"]
    assert target["measured"] == 3000.0


def test_another_stream_count_is_not_judged() -> None:
    options = BenchOptions(concurrency=16, chunks=200, chunk_delay_ms=20)

    [target] = scaled_targets(_result(4.0, machine_busy=0.5, busiest=0.3), options)

    assert target["met"] is None


def test_answers_slower_than_the_mock_are_saturation() -> None:
    """4 s answers that took 9 s: the server fell behind, whatever the CPU counters say."""
    quiet = saturation({"chatplane": 0.3}, {"busy_cores": 0.2})
    behind = {"total_ms": {"p50": 9000.0}, "saturation": dict(quiet)}
    on_time = {"total_ms": {"p50": 4100.0}, "saturation": dict(quiet)}

    check_pacing(behind, PACED)
    check_pacing(on_time, PACED)

    assert behind["saturation"]["saturated"] is True
    assert "answers took 9.00 s" in behind["saturation"]["why"]
    assert on_time["saturation"]["saturated"] is False
    assert on_time["saturation"]["answer_ms"] == {"mock": 4020.0, "p50": 4100.0}
