"""The dashboard's arithmetic: snapshots summed over live processes, rates from two samples,
p95 from histogram buckets, counter resets, stale processes, thresholds."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from chatplane.broker.protocol import QueueStats
from chatplane.ops.dashboard import (
    ProcessSample,
    Sample,
    cumulative,
    live_sample,
    quantile,
    state_of,
    tile_values,
    tiles,
    window_totals,
)
from chatplane.ops.presence import ProcessInfo, SeenProcess
from chatplane.ops.snapshot import LATENCY_BOUNDS, MetricsSnapshot
from chatplane.ops.thresholds import TILE_KEYS, thresholds
from tests.conftest import make_settings


def buckets(bounds: tuple[float, ...], *observations: float) -> list[float]:
    """Cumulative bucket counts of these observations."""
    return [float(sum(1 for o in observations if o <= bound)) for bound in bounds]


def snap(
    requests: float = 0,
    errors: float = 0,
    *,
    latencies: tuple[float, ...] = (),
    turns: dict[str, float] | None = None,
    streams: float = 0,
) -> MetricsSnapshot:
    return MetricsSnapshot(
        requests=requests,
        server_errors=errors,
        turns=turns or {},
        latency_buckets=buckets(LATENCY_BOUNDS, *latencies),
        open_streams=streams,
    )


def sample(at: float, **processes: tuple[float, MetricsSnapshot]) -> Sample:
    return Sample(
        at,
        {
            name: ProcessSample(name, started, metrics)
            for name, (started, metrics) in processes.items()
        },
    )


def test_counters_and_gauges_sum_over_processes() -> None:
    now = sample(
        100,
        a=(0, snap(10, 1, turns={"completed": 2}, streams=3)),
        b=(0, snap(5, 0, turns={"completed": 1, "failed": 1}, streams=4)),
    )
    totals = cumulative(now)
    assert totals.requests == 15
    assert totals.server_errors == 1
    assert totals.turns == {"completed": 3, "failed": 1}
    assert tile_values(None, now)["open_streams"] == 7


def test_rates_come_from_the_difference_of_two_samples() -> None:
    base = sample(100, a=(0, snap(100, 0)), b=(0, snap(50, 0)))
    now = sample(110, a=(0, snap(150, 5)), b=(0, snap(100, 5)))
    values = tile_values(base, now)
    assert values["requests_per_s"] == pytest.approx(10.0)  # (50 + 50) / 10 s
    assert values["error_rate"] == pytest.approx(0.1)


def test_without_a_second_sample_rates_are_unknown() -> None:
    only = sample(100, a=(0, snap(100, 0)))
    values = tile_values(None, only)
    assert values["requests_per_s"] is None
    assert state_of(values["requests_per_s"], 1, 2) == "unknown"


def test_a_restarted_process_counts_from_zero_never_negative() -> None:
    base = sample(100, a=(0, snap(1000, 10)), b=(0, snap(10, 0)))
    # `a` restarted at 105 (new start time, counters from zero); `b` carries on.
    now = sample(110, a=(105, snap(20, 0)), b=(0, snap(30, 0)))
    window = window_totals(base, now)
    assert window.requests == 40  # 20 since the restart + 20 more on b
    assert window.server_errors == 0


def test_counters_that_went_down_are_a_reset_too() -> None:
    base = sample(100, a=(0, snap(500, 0, latencies=(0.1,) * 50)))
    now = sample(110, a=(0, snap(7, 0, latencies=(0.1,) * 7)))
    window = window_totals(base, now)
    assert window.requests == 7
    assert window.latency_buckets[-1] == 7
    assert all(count >= 0 for count in window.latency_buckets)


def test_a_process_first_seen_counts_only_if_it_started_inside_the_window() -> None:
    base = sample(100, a=(0, snap(10, 0)))
    now = sample(110, a=(0, snap(10, 0)), fresh=(104, snap(8, 0)), old=(50, snap(9000, 0)))
    assert window_totals(base, now).requests == 8  # `old` was there before: not new traffic


def test_stale_processes_and_ones_without_numbers_are_left_out() -> None:
    def seen(name: str, *, stale: bool, metrics: MetricsSnapshot | None) -> SeenProcess:
        info = ProcessInfo(
            id=name,
            kind="api",
            host="h",
            pid=1,
            version="x",
            started_at=0,
            seen_at=0,
            metrics=metrics.dump() if metrics else None,
        )
        return SeenProcess(info, 0.0, stale=stale)

    live = live_sample(
        [
            seen("fresh", stale=False, metrics=snap(5, streams=2)),
            seen("gone", stale=True, metrics=snap(1000, streams=50)),
            seen("old-version", stale=False, metrics=None),
        ],
        at=10,
    )
    assert set(live.processes) == {"fresh"}
    assert cumulative(live).requests == 5
    assert tile_values(None, live)["open_streams"] == 2


def test_p95_from_buckets_interpolates_inside_the_bucket() -> None:
    bounds = (0.1, 0.5, 1.0, float("inf"))
    # 100 observations: 90 under 0.1 s, 10 between 0.5 and 1 s -> rank 95 is half-way in.
    counts = [90.0, 90.0, 100.0, 100.0]
    assert quantile(0.95, bounds, counts) == pytest.approx(0.75)
    assert quantile(0.5, bounds, counts) == pytest.approx(0.1 * 50 / 90)
    assert quantile(0.95, bounds, [0.0, 0.0, 0.0, 0.0]) is None
    # Beyond the highest finite bound: that bound, as histogram_quantile says.
    assert quantile(0.95, bounds, [0.0, 0.0, 0.0, 10.0]) == 1.0


def test_p95_latency_over_the_window_ignores_older_requests() -> None:
    base = sample(100, a=(0, snap(100, latencies=(9.0,) * 100)))
    now = sample(110, a=(0, snap(120, latencies=(9.0,) * 100 + (0.02,) * 20)))
    p95 = tile_values(base, now)["latency_p95_s"]
    assert p95 is not None
    assert 0.01 < p95 <= 0.025


def test_queue_and_active_users_come_from_the_sample() -> None:
    now = Sample(1, {}, QueueStats(depth=7, oldest_waiting_age_s=12.5), active_users=3)
    values = tile_values(None, now)
    assert (values["queue_depth"], values["queue_age_s"], values["active_users"]) == (7, 12.5, 3)


def test_state_follows_the_thresholds() -> None:
    limits = thresholds({"error_rate": (0.1, 0.5)})
    assert limits["latency_p95_s"] == (1.0, 3.0)  # a default
    shown = {
        tile.key: tile.state
        for tile in tiles({"error_rate": 0.2, "latency_p95_s": 5.0, "queue_depth": 0}, limits)
    }
    assert shown["error_rate"] == "warning"
    assert shown["latency_p95_s"] == "critical"
    assert shown["queue_depth"] == "ok"
    assert shown["active_users"] == "unknown"
    assert list(shown) == list(TILE_KEYS)


def test_threshold_settings_are_validated(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, dashboard_thresholds={"queue_depth": [5, 50]})
    assert settings.dashboard_thresholds == {"queue_depth": (5, 50)}
    with pytest.raises(ValidationError, match="unknown dashboard tiles"):
        make_settings(tmp_path, dashboard_thresholds={"cpu": [1, 2]})
    with pytest.raises(ValidationError, match="warning <= critical"):
        make_settings(tmp_path, dashboard_thresholds={"queue_depth": [50, 5]})
