"""This process's own numbers for the live operations dashboard, read from the Prometheus
collectors `/metrics` exports (no bookkeeping of its own on the request path).

A snapshot holds cumulative counters, histogram bucket counts and a few live gauges; it
rides along with the process's presence announcement, and the dashboard sums the snapshots
of the live processes (`chatplane.ops.dashboard`). With `serve --workers N` the collectors are
file-backed, and each process still reads only its own values."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.samples import Sample

from chatplane.observability.metrics import (
    ACTIVE_STREAMS,
    GATEWAY_FIRST_TOKEN,
    HTTP_REQUEST_DURATION,
    HTTP_REQUESTS,
    PROVIDER_ERRORS,
    TURN_DURATION,
    TURN_FIRST_TOKEN,
    WS_CONNECTIONS,
    WS_MESSAGES,
    WS_SUBSCRIPTIONS,
)

# Routes whose "request" lasts as long as a stream stays open: their durations would say
# how long people read, not how fast the service answers, so p95 latency leaves them out.
STREAM_ROUTES = frozenset(
    {
        "/api/turns/{turn_id}/events",
        "/api/kb/{kb_id}/documents/{document_id}/events",
        "/api/ws",
        "/api/ops/live",
    }
)
MESSAGE_ROUTES = {
    ("/api/conversations/{conversation_id}/messages", "POST", "202"),
    ("/v1/chat/completions", "POST", "200"),
}
LATENCY_BOUNDS: tuple[float, ...] = tuple(HTTP_REQUEST_DURATION._upper_bounds)
FIRST_TOKEN_BOUNDS: tuple[float, ...] = tuple(TURN_FIRST_TOKEN._upper_bounds)


@dataclass(slots=True)
class MetricsSnapshot:
    """Counters are cumulative since the process started; `*_buckets` are cumulative
    histogram counts, one per bound (the last is +Inf); the rest are current values."""

    requests: float = 0.0
    server_errors: float = 0.0  # 5xx answers
    messages: float = 0.0  # chat messages accepted: native (HTTP, WebSocket) and /v1 calls
    provider_errors: float = 0.0
    turns: dict[str, float] = field(default_factory=dict)  # ended turns by outcome
    latency_buckets: list[float] = field(default_factory=list)
    first_token_buckets: list[float] = field(default_factory=list)
    open_streams: float = 0.0  # SSE turn streams, /v1 streams and WebSocket connections
    ws_connections: float = 0.0
    ws_subscriptions: float = 0.0

    def dump(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def load(cls, raw: object) -> MetricsSnapshot | None:
        """A snapshot from a presence entry; None when it holds none (an older process)."""
        if not isinstance(raw, dict):
            return None
        known = cls.__dataclass_fields__
        try:
            return cls(**{name: value for name, value in raw.items() if name in known})
        except TypeError:
            return None


def take_snapshot() -> MetricsSnapshot:
    """This process's numbers now: a walk over a few collectors (microseconds per series)."""
    snapshot = MetricsSnapshot()
    for sample in _samples(HTTP_REQUESTS, "_total"):
        labels = sample.labels
        snapshot.requests += sample.value
        if labels["status"].startswith("5"):
            snapshot.server_errors += sample.value
        if (labels["route"], labels["method"], labels["status"]) in MESSAGE_ROUTES:
            snapshot.messages += sample.value
    for sample in _samples(WS_MESSAGES, "_total"):
        if sample.labels["direction"] == "out" and sample.labels["type"] == "accepted":
            snapshot.messages += sample.value
    snapshot.provider_errors = sum((s.value for s in _samples(PROVIDER_ERRORS, "_total")), 0.0)
    for sample in _samples(TURN_DURATION, "_count"):
        outcome = sample.labels["outcome"]
        snapshot.turns[outcome] = snapshot.turns.get(outcome, 0.0) + sample.value
    snapshot.latency_buckets = _buckets(
        (HTTP_REQUEST_DURATION,), LATENCY_BOUNDS, lambda labels: labels["route"] in STREAM_ROUTES
    )
    snapshot.first_token_buckets = _buckets(
        (TURN_FIRST_TOKEN, GATEWAY_FIRST_TOKEN), FIRST_TOKEN_BOUNDS, lambda labels: False
    )
    snapshot.ws_connections = _gauge(WS_CONNECTIONS)
    snapshot.ws_subscriptions = _gauge(WS_SUBSCRIPTIONS)
    snapshot.open_streams = _gauge(ACTIVE_STREAMS) + snapshot.ws_connections
    return snapshot


def _samples(metric: Counter | Histogram | Gauge, suffix: str) -> Iterable[Sample]:
    name = metric._name + suffix
    for family in metric.collect():
        for sample in family.samples:
            if sample.name == name:
                yield sample


def _gauge(metric: Gauge) -> float:
    return max(0.0, sum(sample.value for sample in _samples(metric, "")))


def _buckets(
    histograms: Iterable[Histogram],
    bounds: tuple[float, ...],
    skip: Callable[[Mapping[str, str]], bool],
) -> list[float]:
    counts = [0.0] * len(bounds)
    index = {bound: n for n, bound in enumerate(bounds)}
    for histogram in histograms:
        for sample in _samples(histogram, "_bucket"):
            if skip(sample.labels):
                continue
            n = index.get(float(sample.labels["le"]))
            if n is not None:
                counts[n] += sample.value
    return counts
