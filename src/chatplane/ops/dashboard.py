"""The live operations dashboard: the metrics snapshots of every live process (from their
presence announcements), summed; rates and p95s from the difference between two such sums a
window apart; queue depth and age from the broker; active users from the presence store.

Counters are compared per process, so a process that restarted (or whose counters went
down) counts from zero instead of making a rate negative; a process seen for the first time
counts only if it started inside the window (else its earlier traffic is unknown, not new).
Stale processes (silent for 3 heartbeats) are left out. Remote numbers are as fresh as
their last heartbeat (`CHATPLANE_PRESENCE_INTERVAL_S`); this process's are current."""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from chatplane.broker.protocol import Broker, QueueStats
from chatplane.errors import ChatplaneError
from chatplane.ops.presence import Presence, SeenProcess
from chatplane.ops.snapshot import FIRST_TOKEN_BOUNDS, LATENCY_BOUNDS, MetricsSnapshot
from chatplane.ops.thresholds import TILES, thresholds
from chatplane.settings import Settings

TileState = Literal["ok", "warning", "critical", "unknown"]
HISTORY_POINTS = 150  # frames kept for the charts (5 minutes at the default 2 s)
CHARTED = (
    "requests_per_s",
    "latency_p95_s",
    "error_rate",
    "first_token_p95_s",
    "open_streams",
    "queue_depth",
)
_QUEUE_TIMEOUT_S = 2.0


@dataclass(frozen=True, slots=True)
class ProcessSample:
    id: str
    started_at: float
    metrics: MetricsSnapshot


@dataclass(frozen=True, slots=True)
class Sample:
    """The deployment at one moment: the snapshots of the live processes, and the live
    state read beside them (None where it could not be read)."""

    at: float
    processes: Mapping[str, ProcessSample]
    queue: QueueStats | None = None
    active_users: int | None = None


@dataclass(slots=True)
class Totals:
    """Counters summed over processes (cumulative, or over a window)."""

    requests: float = 0.0
    server_errors: float = 0.0
    messages: float = 0.0
    provider_errors: float = 0.0
    turns: dict[str, float] = field(default_factory=dict)
    latency_buckets: list[float] = field(default_factory=lambda: [0.0] * len(LATENCY_BOUNDS))
    first_token_buckets: list[float] = field(
        default_factory=lambda: [0.0] * len(FIRST_TOKEN_BOUNDS)
    )

    def add(self, snapshot: MetricsSnapshot, sign: float = 1.0) -> None:
        self.requests += sign * snapshot.requests
        self.server_errors += sign * snapshot.server_errors
        self.messages += sign * snapshot.messages
        self.provider_errors += sign * snapshot.provider_errors
        for outcome, count in snapshot.turns.items():
            self.turns[outcome] = self.turns.get(outcome, 0.0) + sign * count
        _add_into(self.latency_buckets, snapshot.latency_buckets, sign)
        _add_into(self.first_token_buckets, snapshot.first_token_buckets, sign)


@dataclass(frozen=True, slots=True)
class Tile:
    key: str
    label: str
    unit: str
    value: float | None
    state: TileState
    warning: float
    critical: float


@dataclass(frozen=True, slots=True)
class View:
    at: float
    window_s: float | None  # the span the rates cover; None until there are two samples
    processes: int
    tiles: list[Tile]
    totals: Totals
    open_streams: float
    ws_connections: float
    ws_subscriptions: float
    history: Mapping[str, list[tuple[float, float | None]]]
    errors: list[str]


def _add_into(into: list[float], values: Sequence[float], sign: float) -> None:
    for n, value in enumerate(values[: len(into)]):
        into[n] += sign * value


def live_sample(
    processes: Sequence[SeenProcess],
    *,
    at: float,
    queue: QueueStats | None = None,
    active_users: int | None = None,
) -> Sample:
    """The snapshots of the processes that are not stale (and that publish one)."""
    found: dict[str, ProcessSample] = {}
    for seen in processes:
        metrics = MetricsSnapshot.load(seen.info.metrics)
        if seen.stale or metrics is None:
            continue
        found[seen.info.id] = ProcessSample(seen.info.id, seen.info.started_at, metrics)
    return Sample(at, found, queue, active_users)


def cumulative(sample: Sample) -> Totals:
    totals = Totals()
    for process in sample.processes.values():
        totals.add(process.metrics)
    return totals


def window_totals(base: Sample, now: Sample) -> Totals:
    """What happened between two samples, per process, never negative."""
    totals = Totals()
    for process in now.processes.values():
        before = base.processes.get(process.id)
        if before is not None and before.started_at == process.started_at:
            if not _went_down(before.metrics, process.metrics):
                totals.add(process.metrics)
                totals.add(before.metrics, -1.0)
                continue
            totals.add(process.metrics)  # counters reset: all it counted is new
        elif before is not None or process.started_at >= base.at:
            totals.add(process.metrics)  # restarted, or started inside the window
    return totals


def _went_down(before: MetricsSnapshot, now: MetricsSnapshot) -> bool:
    pairs = [
        (before.requests, now.requests),
        (before.server_errors, now.server_errors),
        (before.messages, now.messages),
        (before.provider_errors, now.provider_errors),
        *((count, now.turns.get(outcome, 0.0)) for outcome, count in before.turns.items()),
        *zip(before.latency_buckets, now.latency_buckets, strict=False),
        *zip(before.first_token_buckets, now.first_token_buckets, strict=False),
    ]
    return any(later < earlier for earlier, later in pairs)


def quantile(q: float, bounds: Sequence[float], buckets: Sequence[float]) -> float | None:
    """The q-quantile of cumulative bucket counts, interpolated linearly inside a bucket as
    Prometheus's `histogram_quantile` does; None without observations."""
    total = buckets[-1] if buckets else 0.0
    if total <= 0:
        return None
    rank = q * total
    previous_bound, previous_count = 0.0, 0.0
    for bound, count in zip(bounds, buckets, strict=False):
        if count >= rank:
            if math.isinf(bound):  # above the highest finite bound: say that bound
                return previous_bound
            if count == previous_count:
                return bound
            return previous_bound + (bound - previous_bound) * (rank - previous_count) / (
                count - previous_count
            )
        previous_bound, previous_count = bound, count
    return previous_bound


def state_of(value: float | None, warning: float, critical: float) -> TileState:
    if value is None:
        return "unknown"
    if value >= critical:
        return "critical"
    if value >= warning:
        return "warning"
    return "ok"


def tile_values(base: Sample | None, now: Sample) -> dict[str, float | None]:
    """Every tile's value at `now`; rates need a `base` sample before it."""
    gauges = [p.metrics for p in now.processes.values()]
    values: dict[str, float | None] = {
        "active_users": now.active_users,
        "open_streams": sum(m.open_streams for m in gauges),
        "queue_depth": now.queue.depth if now.queue is not None else None,
        "queue_age_s": now.queue.oldest_waiting_age_s if now.queue is not None else None,
    }
    span = now.at - base.at if base is not None else 0.0
    if base is None or span <= 0:
        values.update(dict.fromkeys(_RATES))
        return values
    window = window_totals(base, now)
    values.update(
        requests_per_s=window.requests / span,
        latency_p95_s=quantile(0.95, LATENCY_BOUNDS, window.latency_buckets),
        error_rate=window.server_errors / window.requests if window.requests > 0 else 0.0,
        first_token_p95_s=quantile(0.95, FIRST_TOKEN_BOUNDS, window.first_token_buckets),
        messages_per_min=window.messages * 60 / span,
        turns_per_min=sum(window.turns.values()) * 60 / span,
        provider_errors_per_min=window.provider_errors * 60 / span,
    )
    return values


_RATES = (
    "requests_per_s",
    "latency_p95_s",
    "error_rate",
    "first_token_p95_s",
    "messages_per_min",
    "turns_per_min",
    "provider_errors_per_min",
)


def _rounded(value: float | None) -> float | None:
    return round(value, 4) if value is not None else None


def tiles(
    values: Mapping[str, float | None], limits: Mapping[str, tuple[float, float]]
) -> list[Tile]:
    out: list[Tile] = []
    for spec in TILES:
        warning, critical = limits[spec.key]
        value = _rounded(values.get(spec.key))
        out.append(
            Tile(
                spec.key,
                spec.label,
                spec.unit,
                value,
                state_of(value, warning, critical),
                warning,
                critical,
            )
        )
    return out


class Dashboard:
    """The samples one API process keeps for its viewers: taken when a viewer asks (at most
    one per half frame interval, however many viewers), kept for the rate window and the
    charts' history."""

    def __init__(self, settings: Settings, presence: Presence, broker: Broker) -> None:
        self.presence = presence
        self.broker = broker
        self.interval_s = settings.dashboard_interval_s
        self.window_s = settings.dashboard_window_s
        self.limits = thresholds(settings.dashboard_thresholds)
        self.samples: deque[Sample] = deque()
        self.history: deque[tuple[float, dict[str, float | None]]] = deque(maxlen=HISTORY_POINTS)
        self._view: View | None = None
        self._lock = asyncio.Lock()

    async def view(self) -> View:
        async with self._lock:
            now = time.time()
            if self._view is not None and now - self._view.at < self.interval_s / 2:
                return self._view
            sample, errors = await self._sample(now)
            self._view = self._add(sample, errors)
            return self._view

    def _add(self, sample: Sample, errors: list[str]) -> View:
        self.samples.append(sample)
        # Keep one sample at or beyond the window's start: the base of the rates.
        while len(self.samples) > 2 and self.samples[1].at <= sample.at - self.window_s:
            self.samples.popleft()
        base = self.samples[0] if len(self.samples) > 1 else None
        values = tile_values(base, sample)
        self.history.append((sample.at, {key: _rounded(values.get(key)) for key in CHARTED}))
        gauges = [p.metrics for p in sample.processes.values()]
        return View(
            at=sample.at,
            window_s=round(sample.at - base.at, 3) if base is not None else None,
            processes=len(sample.processes),
            tiles=tiles(values, self.limits),
            totals=cumulative(sample),
            open_streams=sum(m.open_streams for m in gauges),
            ws_connections=sum(m.ws_connections for m in gauges),
            ws_subscriptions=sum(m.ws_subscriptions for m in gauges),
            history={key: [(at, point[key]) for at, point in self.history] for key in CHARTED},
            errors=errors,
        )

    async def _sample(self, now: float) -> tuple[Sample, list[str]]:
        errors: list[str] = []

        async def queue() -> QueueStats | None:
            try:
                async with asyncio.timeout(_QUEUE_TIMEOUT_S):
                    return await self.broker.stats()
            except ChatplaneError as exc:
                errors.append(f"queue: {exc.detail}")
            except TimeoutError:
                errors.append(f"queue: no answer within {_QUEUE_TIMEOUT_S:g} s")
            return None

        async def users() -> int | None:
            try:
                async with asyncio.timeout(_QUEUE_TIMEOUT_S):
                    return await self.presence.active_users()
            except ChatplaneError as exc:
                errors.append(f"active users: {exc.detail}")
            except TimeoutError:
                errors.append("active users: no answer")
            return None

        async def processes() -> list[SeenProcess]:
            try:
                async with asyncio.timeout(_QUEUE_TIMEOUT_S):
                    return await self.presence.processes()
            except (ChatplaneError, TimeoutError):
                errors.append("processes: only this one (the presence store did not answer)")
            return [SeenProcess(self.presence.snapshot(), 0.0, stale=False)]

        seen, stats, active = await asyncio.gather(processes(), queue(), users())
        return replace(live_sample(seen, at=now), queue=stats, active_users=active), errors
