"""Every Prometheus metric of chatplane, and the small helpers that record them.

Names start with `chatplane_`; labels are bounded (route templates, model names from the
registry, tenant ids, fixed vocabularies), never user ids, raw paths or turn ids.
`docs/metrics.md` describes each metric.

Helpers for code that records metrics (each costs about a microsecond):
- `observe_gateway_call(model, tenant, usage, cost_usd, ttft_s)`: a finished `/v1` call:
  tokens and cost by model and tenant, time to first token (None when not streamed).
  `model` is the registry name the call resolved to, never the raw request string.
- `gateway_stream_started()` / `gateway_stream_ended()`: an open `/v1` stream (call them in
  a try/finally).
- `provider_error(provider, kind)`: an upstream call failed (`ProviderError.kind`; provider
  is the route's kind: openai, anthropic, mock).
- `limit_refused(kind, scope)`: a request refused by a limit; kind in `LIMIT_KINDS` (rate,
  concurrency, budget), scope in `LIMIT_SCOPES` (ip, user, key, tenant).
- `login_failed(reason)`: credentials, disabled or locked.
- `redis_error(component)`: a Redis call failed (broker, broker_reader, limits, cache...).
- `usage_journal(outcome, records)`: gateway usage records spilled to the journal,
  replayed from it, or dropped.
- turns: `turn_started`, `turn_first_token`, `turn_ended` (the runner).
- `turn_swept(action)`: the turn sweeper requeued or failed a turn left with no job.
- `citations_dropped(count)`: numbers an answer cited that named no given passage.
- caches (`chatplane.cache`): `cache_lookup_counters(cache, tier)`,
  `cache_invalidation(cache, direction)`, `cache_error(op)`.
- `response_cache(result, stored_bytes=0)`: the gateway response cache (hit, miss, store,
  skip, error).

Multi-process: when `PROMETHEUS_MULTIPROC_DIR` is set before this module is imported (as
`chatplane serve --workers N` does), values live in files shared by the processes and any
of them serves the sums; gauges say how processes combine (`livesum`, `livemax`). Without
it, values live in this process. Live state (queue depth, oldest job age) is read from the
broker when scraped (`exposition.render_metrics`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from sqlalchemy import event

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine
    from sqlalchemy.pool import Pool


CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
# prometheus-client chooses file-backed values when this is set at import; so do we.
MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
MULTIPROC_DIR = os.environ.get(MULTIPROC_DIR_ENV) or None

HTTP_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
LIMIT_KINDS = frozenset({"rate", "concurrency", "budget"})
LIMIT_SCOPES = frozenset({"ip", "user", "key", "tenant"})
LOGIN_FAILURE_REASONS = frozenset({"credentials", "disabled", "locked"})
TURN_OUTCOMES = frozenset({"completed", "failed", "cancelled"})
SWEEP_ACTIONS = frozenset({"requeued", "failed"})
UNMATCHED = "unmatched"
OTHER = "other"
ABANDONED_CODE = "turn_abandoned"  # the runner's error code for a job given up on

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
_FIRST_TOKEN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60, 120)
_TURN_BUCKETS = (0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800)

HTTP_REQUESTS = Counter(
    "chatplane_http_requests",
    "HTTP requests by route template, method and status.",
    ["route", "method", "status"],
)
HTTP_REQUEST_DURATION = Histogram(
    "chatplane_http_request_duration_seconds",
    "HTTP request duration until the last byte of the response (streams included).",
    ["route", "method"],
    buckets=_LATENCY_BUCKETS,
)
TURN_FIRST_TOKEN = Histogram(
    "chatplane_turn_first_token_seconds",
    "Native turns: from the message being accepted (202) to the first token sent.",
    ["model"],
    buckets=_FIRST_TOKEN_BUCKETS,
)
TURN_DURATION = Histogram(
    "chatplane_turn_duration_seconds",
    "Native turns: from the message being accepted to the stored outcome.",
    ["model", "outcome"],
    buckets=_TURN_BUCKETS,
)
GATEWAY_FIRST_TOKEN = Histogram(
    "chatplane_gateway_first_token_seconds",
    "OpenAI-compatible streamed calls: from the request to the first token forwarded.",
    ["model"],
    buckets=_FIRST_TOKEN_BUCKETS,
)
TOKENS = Counter(
    "chatplane_tokens",
    "Tokens used by model, tenant id and direction (input, output); turns and /v1 calls.",
    ["model", "tenant", "direction"],
)
COST_USD = Counter(
    "chatplane_cost_usd",
    "Cost in US dollars by model and tenant id, at the configured prices.",
    ["model", "tenant"],
)
PROVIDER_ERRORS = Counter(
    "chatplane_provider_errors",
    "Failed upstream model calls by provider kind and error kind.",
    ["provider", "kind"],
)
ACTIVE_STREAMS = Gauge(
    "chatplane_active_streams",
    "Open response streams: sse (turn events) and gateway (/v1 streamed calls).",
    ["kind"],
    multiprocess_mode="livesum",
)
RUNNING_TURNS = Gauge(
    "chatplane_running_turns",
    "Turns running in this process's turn worker.",
    multiprocess_mode="livesum",
)
JOBS_RECLAIMED = Counter(
    "chatplane_jobs_reclaimed",
    "Turn jobs run again after their worker died or handed them back (turn.restarted).",
)
JOBS_DEAD_LETTERED = Counter(
    "chatplane_jobs_dead_lettered",
    "Turn jobs given up after every attempt; their turn ended failed (turn_abandoned).",
)
TURNS_SWEPT = Counter(
    "chatplane_turns_swept",
    "Turns the sweeper found queued or running with no job: requeued (a job queued again) "
    "or failed (turn_lost: past the attempt limit or the max age).",
    ["action"],
)
DB_POOL_IN_USE = Gauge(
    "chatplane_db_pool_in_use",
    "Database connections checked out of the pool.",
    multiprocess_mode="livesum",
)
DB_POOL_SIZE = Gauge(
    "chatplane_db_pool_size",
    "Configured database pool size (without overflow).",
    multiprocess_mode="livesum",
)
DB_POOL_OVERFLOW = Gauge(
    "chatplane_db_pool_overflow",
    "Database connections open beyond the pool size.",
    multiprocess_mode="livesum",
)
DB_POOL_USAGE_RATIO = Gauge(
    "chatplane_db_pool_usage_ratio",
    "Connections in use over the most the pool may open (size + max overflow); the "
    "highest of the processes.",
    multiprocess_mode="livemax",
)
REDIS_ERRORS = Counter(
    "chatplane_redis_errors",
    "Failed Redis calls by component.",
    ["component"],
)
DB_UNAVAILABLE = Counter(
    "chatplane_db_unavailable",
    "Database calls that failed because the database could not be reached, by reason "
    "(refused, timeout, lost).",
    ["reason"],
)
USAGE_JOURNAL = Counter(
    "chatplane_usage_journal_records",
    "Gateway usage records the database could not take when they were due, by outcome: "
    "spilled (to the journal), replayed (from it into the database), dropped (lost).",
    ["outcome"],
)
LIMIT_REFUSALS = Counter(
    "chatplane_limit_refusals",
    "Requests refused by a limit: kind (rate, concurrency, budget) and scope (ip, user, "
    "key, tenant).",
    ["kind", "scope"],
)
LOGIN_FAILURES = Counter(
    "chatplane_login_failures",
    "Failed password logins by reason (credentials, disabled, locked).",
    ["reason"],
)

KB_DOCUMENTS = Counter(
    "chatplane_kb_documents",
    "Knowledge-base documents by event: queued (uploaded), ready (indexed), failed.",
    ["event"],
)
KB_CHUNKS_INDEXED = Counter(
    "chatplane_kb_chunks_indexed",
    "Chunks written to the knowledge index by ingestion jobs.",
)
KB_INGEST_DURATION = Histogram(
    "chatplane_kb_ingest_duration_seconds",
    "Time an ingestion job took from claim to ready (extract, chunk, embed, write).",
    buckets=_LATENCY_BUCKETS,
)
KB_EMBED_DURATION = Histogram(
    "chatplane_kb_embed_duration_seconds",
    "Time to embed one document's chunks.",
    buckets=_LATENCY_BUCKETS,
)
KB_EMBED_ERRORS = Counter(
    "chatplane_kb_embed_errors",
    "Embedding calls that failed (the document is retried, then failed).",
)
KB_RETRIEVAL_DURATION = Histogram(
    "chatplane_kb_retrieval_duration_seconds",
    "Knowledge retrieval (search) latency by mode (lexical, hybrid).",
    ["mode"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
CITATIONS_DROPPED = Counter(
    "chatplane_citations_dropped",
    "Cited numbers in answers that named no passage given to the model ([7] of 3, [0]).",
)
CACHE_TIERS = frozenset({"local", "redis"})
CACHE_LOOKUPS = Counter(
    "chatplane_cache_lookups",
    "Lookups in the cache of what hot paths read (principals, policies) by cache, tier "
    "(local, redis) and result (hit, miss).",
    ["cache", "tier", "result"],
)
CACHE_INVALIDATIONS = Counter(
    "chatplane_cache_invalidations",
    "Cache invalidations by cache and direction: sent by this process, received from another.",
    ["cache", "direction"],
)
CACHE_ERRORS = Counter(
    "chatplane_cache_errors",
    "Failed cache calls to Redis by operation (get, put, invalidate, subscribe); the request "
    "went on with the in-process tier and the database.",
    ["op"],
)
RESPONSE_CACHE_RESULTS = frozenset({"hit", "miss", "store", "skip", "error"})
RESPONSE_CACHE = Counter(
    "chatplane_gateway_response_cache",
    "Gateway response cache lookups and writes by result: hit, miss (a cacheable request "
    "went upstream), store (its answer was kept), skip (not kept: too large, incomplete, "
    "tool calls), error (the store did not answer).",
    ["result"],
)
RESPONSE_CACHE_STORED_BYTES = Counter(
    "chatplane_gateway_response_cache_stored_bytes",
    "Bytes of answers written to the gateway response cache.",
)

# The WebSocket channel (/api/ws).
WS_MESSAGE_TYPES = frozenset(
    {"subscribe", "unsubscribe", "send", "cancel", "event", "accepted", "error"}
)
WS_CONNECTIONS = Gauge(
    "chatplane_ws_connections",
    "Open WebSocket connections (/api/ws).",
    multiprocess_mode="livesum",
)
WS_SUBSCRIPTIONS = Gauge(
    "chatplane_ws_subscriptions",
    "Turns followed on open WebSocket connections.",
    multiprocess_mode="livesum",
)
WS_MESSAGES = Counter(
    "chatplane_ws_messages",
    "WebSocket messages by direction (in, out) and type (subscribe, send, event, "
    "accepted, error...; other for anything else).",
    ["direction", "type"],
)
WS_CLOSES = Counter(
    "chatplane_ws_closes",
    "Closed WebSocket connections by close code (1000 when the client left).",
    ["code"],
)

# Read from the broker at scrape time: (name, help).
QUEUE_DEPTH = ("chatplane_queue_depth", "Turn jobs waiting or running (not yet acknowledged).")
QUEUE_OLDEST_JOB_AGE = (
    "chatplane_queue_oldest_job_age_seconds",
    "Age of the oldest turn job not yet handed to a worker (0 when none waits).",
)
KB_DOCUMENTS_BY_STATUS = (
    "chatplane_kb_documents_by_status",
    "Knowledge-base documents by status (queued, indexing, ready, failed), from the database.",
)
KB_OLDEST_WAITING_AGE = (
    "chatplane_kb_oldest_waiting_document_age_seconds",
    "Age of the oldest document queued or indexing (0 when none waits).",
)
SCRAPE_TIME_GAUGES = (
    QUEUE_DEPTH,
    QUEUE_OLDEST_JOB_AGE,
    KB_DOCUMENTS_BY_STATUS,
    KB_OLDEST_WAITING_AGE,
)

_SSE_STREAMS = ACTIVE_STREAMS.labels("sse")
_GATEWAY_STREAMS = ACTIVE_STREAMS.labels("gateway")


def exported_metric_names() -> frozenset[str]:
    """Every series name this module exports, with the `_total`, `_bucket`, `_sum`,
    `_count` suffixes (for checking dashboards and alert rules)."""
    names: set[str] = {name for name, _ in SCRAPE_TIME_GAUGES}
    for value in globals().values():
        if isinstance(value, Counter):
            names.add(value._name + "_total")
        elif isinstance(value, Histogram):
            names.update(value._name + suffix for suffix in ("_bucket", "_sum", "_count"))
        elif isinstance(value, Gauge):
            names.add(value._name)
    return frozenset(names)


# HTTP (recorded by `HttpMiddleware`).


class HttpMetrics:
    """Records one request in about a microsecond: the label children are cached per
    (route, method, status), and the route template comes from the scope after routing
    (`scope["route"]` for FastAPI routes, the endpoint of plain Starlette routes)."""

    def __init__(self) -> None:
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._endpoint_routes: dict[Any, str] | None = None

    def observe(self, scope: Mapping[str, Any], status: int, seconds: float) -> str:
        """Count and time one request; returns its route label (for the access log)."""
        method: str = scope["method"]
        if method not in HTTP_METHODS:
            method = OTHER
        key = (self.route(scope), method, status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                HTTP_REQUESTS.labels(key[0], method, str(status)),
                HTTP_REQUEST_DURATION.labels(key[0], method),
            )
        children[0].inc()
        children[1].observe(seconds)
        return key[0]

    def route(self, scope: Mapping[str, Any]) -> str:
        route = scope.get("route")
        if route is not None:
            path: str | None = getattr(route, "path", None)
            if path is not None:
                return path
        endpoint = scope.get("endpoint")
        if endpoint is None:
            return UNMATCHED
        if self._endpoint_routes is None:
            self._endpoint_routes = _endpoint_routes(getattr(scope.get("app"), "routes", ()))
        return self._endpoint_routes.get(endpoint, UNMATCHED)


def _endpoint_routes(routes: Iterable[Any]) -> dict[Any, str]:
    """Plain Starlette routes leave only their endpoint in the scope: map it back to the
    route's template (a mount's app to `<mount>/{path}`)."""
    found: dict[Any, str] = {}
    for route in routes:
        path = getattr(route, "path", None)
        if path is None:
            continue
        endpoint = getattr(route, "endpoint", None)
        if endpoint is not None:
            found.setdefault(endpoint, path)
        elif getattr(route, "app", None) is not None and hasattr(route, "routes"):
            found.setdefault(route.app, path.rstrip("/") + "/{path}")
    return found


# Streams.


def sse_stream_started() -> None:
    _SSE_STREAMS.inc()


def sse_stream_ended() -> None:
    _SSE_STREAMS.dec()


def gateway_stream_started() -> None:
    _GATEWAY_STREAMS.inc()


def gateway_stream_ended() -> None:
    _GATEWAY_STREAMS.dec()


# Turns (recorded by the runner and the turn worker).


class TurnLike(Protocol):
    @property
    def model(self) -> str: ...
    @property
    def tenant_id(self) -> str: ...
    @property
    def created_at(self) -> datetime: ...


class TokenCounts(Protocol):
    @property
    def prompt_tokens(self) -> int: ...
    @property
    def completion_tokens(self) -> int: ...


class UsageLike(TokenCounts, Protocol):
    @property
    def cost_usd(self) -> float: ...


@dataclass(slots=True)
class _TurnClock:
    model: str
    accepted_at: datetime
    first_token_seen: bool = False


# Set by the runner for the turn it runs; the generation task inherits it.
_turn_clock: ContextVar[_TurnClock | None] = ContextVar("chatplane_turn_clock", default=None)


def turn_started(turn: TurnLike, *, restarted: bool) -> None:
    """A run of a turn begins (a restarted one also counts as reclaimed)."""
    if restarted:
        JOBS_RECLAIMED.inc()
    _turn_clock.set(_TurnClock(turn.model, turn.created_at))


def turn_first_token() -> None:
    """Text of the running turn was sent: the first call of a run records the time to
    first token, later calls cost a context variable look-up."""
    clock = _turn_clock.get()
    if clock is None or clock.first_token_seen:
        return
    clock.first_token_seen = True
    TURN_FIRST_TOKEN.labels(clock.model).observe(_seconds_since(clock.accepted_at))


def turn_ended(
    turn: TurnLike,
    outcome: str,
    usage: UsageLike | None = None,
    *,
    error_code: str | None = None,
) -> None:
    """The turn's outcome was stored (once per turn, whichever process stored it), with
    its usage record when it has one."""
    TURN_DURATION.labels(turn.model, outcome if outcome in TURN_OUTCOMES else OTHER).observe(
        _seconds_since(turn.created_at)
    )
    if usage is not None:
        _count_usage(turn.model, turn.tenant_id, usage, usage.cost_usd)
    if error_code == ABANDONED_CODE:
        JOBS_DEAD_LETTERED.inc()


def turn_swept(action: str) -> None:
    """The turn sweeper requeued or failed a turn (action in `SWEEP_ACTIONS`)."""
    TURNS_SWEPT.labels(action if action in SWEEP_ACTIONS else OTHER).inc()


def turn_worker_took() -> None:
    RUNNING_TURNS.inc()


def turn_worker_done() -> None:
    RUNNING_TURNS.dec()


def _seconds_since(when: datetime) -> float:
    if when.tzinfo is None:  # SQLite hands back naive UTC
        when = when.replace(tzinfo=UTC)
    return max(0.0, (datetime.now(UTC) - when).total_seconds())


# The gateway, providers, limits, logins, Redis.


def observe_gateway_call(
    model: str, tenant: str, usage: TokenCounts | None, cost_usd: float, ttft_s: float | None
) -> None:
    if usage is not None:
        _count_usage(model, tenant, usage, cost_usd)
    if ttft_s is not None:
        first_token = _first_token_children.get(model)
        if first_token is None:
            first_token = _first_token_children[model] = GATEWAY_FIRST_TOKEN.labels(model)
        first_token.observe(ttft_s)


# Label children found once per model (and tenant), not per call as `labels()` does (a
# lock, a tuple and a dict look-up each); bounded as the labels are.
_first_token_children: dict[str, Any] = {}
_usage_children: dict[tuple[str, str], tuple[Any, Any, Any]] = {}


def _count_usage(model: str, tenant: str, usage: TokenCounts, cost_usd: float) -> None:
    children = _usage_children.get((model, tenant))
    if children is None:
        children = _usage_children[(model, tenant)] = (
            TOKENS.labels(model, tenant, "input"),
            TOKENS.labels(model, tenant, "output"),
            COST_USD.labels(model, tenant),
        )
    if usage.prompt_tokens:
        children[0].inc(usage.prompt_tokens)
    if usage.completion_tokens:
        children[1].inc(usage.completion_tokens)
    if cost_usd > 0:
        children[2].inc(cost_usd)


def provider_error(provider: str, kind: str) -> None:
    PROVIDER_ERRORS.labels(provider, kind).inc()


def limit_refused(kind: str, scope: str) -> None:
    LIMIT_REFUSALS.labels(
        kind if kind in LIMIT_KINDS else OTHER, scope if scope in LIMIT_SCOPES else OTHER
    ).inc()


def login_failed(reason: str) -> None:
    LOGIN_FAILURES.labels(reason if reason in LOGIN_FAILURE_REASONS else OTHER).inc()


def redis_error(component: str) -> None:
    REDIS_ERRORS.labels(component).inc()


def db_unavailable(reason: str) -> None:
    DB_UNAVAILABLE.labels(reason).inc()


def usage_journal(outcome: str, records: int) -> None:
    """`spilled`, `replayed` or `dropped` gateway usage records (`chatplane.usage.recorder`)."""
    if records:
        USAGE_JOURNAL.labels(outcome).inc(records)


def citations_dropped(count: int) -> None:
    CITATIONS_DROPPED.inc(count)


def cache_lookup_counters(cache: str, tier: str) -> tuple[Any, Any]:
    """The (hit, miss) counters of a cache's tier, bound once by the cache."""
    tier = tier if tier in CACHE_TIERS else OTHER
    return CACHE_LOOKUPS.labels(cache, tier, "hit"), CACHE_LOOKUPS.labels(cache, tier, "miss")


def cache_invalidation(cache: str, direction: str) -> None:
    CACHE_INVALIDATIONS.labels(cache, direction).inc()


def cache_error(op: str) -> None:
    CACHE_ERRORS.labels(op).inc()
    REDIS_ERRORS.labels("cache").inc()


def response_cache(result: str, stored_bytes: int = 0) -> None:
    RESPONSE_CACHE.labels(result if result in RESPONSE_CACHE_RESULTS else OTHER).inc()
    if stored_bytes:
        RESPONSE_CACHE_STORED_BYTES.inc(stored_bytes)


# The WebSocket channel.

_WS_CLOSE_CODES = frozenset({1000, 1001, 1008, 1009, 1011, 1012})


def ws_opened() -> None:
    WS_CONNECTIONS.inc()


def ws_closed(code: int | None) -> None:
    """A connection ended: `code` is the close code the server sent, None when the client
    left first (counted as 1000)."""
    WS_CONNECTIONS.dec()
    code = 1000 if code is None else code
    WS_CLOSES.labels(str(code) if code in _WS_CLOSE_CODES else OTHER).inc()


def ws_subscribed(delta: int) -> None:
    WS_SUBSCRIPTIONS.inc(delta)


def ws_message(direction: str, kind: object) -> None:
    """One message in (from the client) or out; `kind` is its `type` field, as sent."""
    label = kind if isinstance(kind, str) and kind in WS_MESSAGE_TYPES else OTHER
    WS_MESSAGES.labels(direction, label).inc()


# The database pool: gauges kept current by pool events, so every process's files hold
# its own pool and the sums are right without asking each process at scrape time.


def watch_pool(engine: AsyncEngine) -> None:
    pool = engine.sync_engine.pool
    if not callable(getattr(pool, "size", None)):
        return  # NullPool, StaticPool: nothing pooled to report
    capacity = pool.size() + max(0, int(getattr(pool, "_max_overflow", 0)))  # type: ignore[attr-defined]

    def checked_out(*_: object) -> None:
        _set_pool_gauges(pool, capacity, 0)

    def checked_in(*_: object) -> None:  # fired before the connection is back in the pool
        _set_pool_gauges(pool, capacity, -1)

    event.listen(pool, "checkout", checked_out)
    event.listen(pool, "checkin", checked_in)
    checked_out()


def _set_pool_gauges(pool: Pool, capacity: int, pending: int) -> None:
    in_use = max(0, pool.checkedout() + pending)  # type: ignore[attr-defined]
    DB_POOL_IN_USE.set(in_use)
    DB_POOL_SIZE.set(pool.size())  # type: ignore[attr-defined]
    DB_POOL_OVERFLOW.set(max(0, pool.overflow()))  # type: ignore[attr-defined]
    DB_POOL_USAGE_RATIO.set(in_use / capacity if capacity > 0 else 0.0)


# Knowledge bases.


def kb_document_queued() -> None:
    KB_DOCUMENTS.labels("queued").inc()


def kb_document_ended(outcome: str, *, chunks: int = 0, seconds: float | None = None) -> None:
    """An ingestion job ended: `ready` (with its chunk count and duration) or `failed`."""
    KB_DOCUMENTS.labels(outcome).inc()
    if chunks:
        KB_CHUNKS_INDEXED.inc(chunks)
    if seconds is not None:
        KB_INGEST_DURATION.observe(seconds)


def kb_embedded(seconds: float, *, failed: bool = False) -> None:
    if failed:
        KB_EMBED_ERRORS.inc()
    else:
        KB_EMBED_DURATION.observe(seconds)


def kb_retrieved(mode: str, seconds: float) -> None:
    KB_RETRIEVAL_DURATION.labels(mode).observe(seconds)
