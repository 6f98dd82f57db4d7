"""Serving the metrics: `GET /metrics` on the API (plain ASGI), a small listener of its own
in `chatplane worker` processes, and the files `serve --workers N` processes share."""

from __future__ import annotations

import asyncio
import glob
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

import structlog
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError
from starlette.types import Receive, Scope, Send

from chatplane.errors import ChatplaneError
from chatplane.observability.metrics import (
    CONTENT_TYPE,
    KB_DOCUMENTS_BY_STATUS,
    KB_OLDEST_WAITING_AGE,
    MULTIPROC_DIR,
    QUEUE_DEPTH,
    QUEUE_OLDEST_JOB_AGE,
    redis_error,
)

if TYPE_CHECKING:
    from aiohttp import web

    from chatplane.broker.protocol import Broker, QueueStats
    from chatplane.knowledge.service import KnowledgeStats

log = structlog.get_logger("chatplane.metrics")

# A scrape never waits long for the broker: without an answer the queue gauges are left out.
STATS_TIMEOUT_S = 2.0
_HEADERS = [(b"content-type", CONTENT_TYPE.encode()), (b"cache-control", b"no-store")]


async def render_metrics(
    broker: Broker | None, knowledge: KnowledgeStatsSource | None = None
) -> bytes:
    """The exposition text: live queue state from the broker (one cheap call) and the
    knowledge documents by status (one query), the rest rendered in a thread
    (multi-process mode reads files)."""
    stats: QueueStats | None = None
    if broker is not None:
        try:
            async with asyncio.timeout(STATS_TIMEOUT_S):
                stats = await broker.stats()
        except (ChatplaneError, TimeoutError) as exc:
            if isinstance(exc, TimeoutError):
                redis_error("metrics")
            log.warning("metrics_queue_stats_unavailable", error=str(exc))
    documents: KnowledgeStats | None = None
    if knowledge is not None:
        try:
            async with asyncio.timeout(STATS_TIMEOUT_S):
                documents = await knowledge.stats()
        except (ChatplaneError, TimeoutError, SQLAlchemyError) as exc:
            log.warning("metrics_document_stats_unavailable", error=str(exc))
    return await asyncio.to_thread(render, stats, documents)


def render(queue: QueueStats | None, documents: KnowledgeStats | None = None) -> bytes:
    """The exposition text of this process, or of every process sharing the files."""
    live = (_QueueCollector(queue), _DocumentsCollector(documents))
    if MULTIPROC_DIR is None:
        return generate_latest(_Scrape(REGISTRY, *live))
    forget_dead_processes(MULTIPROC_DIR)
    files = CollectorRegistry(auto_describe=False)
    MultiProcessCollector(files, MULTIPROC_DIR)  # type: ignore[no-untyped-call]
    return generate_latest(_Scrape(files, *live))


class KnowledgeStatsSource(Protocol):
    async def stats(self) -> KnowledgeStats: ...


class _DocumentsCollector:
    def __init__(self, stats: KnowledgeStats | None) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        if self.stats is None:
            return
        by_status = GaugeMetricFamily(*KB_DOCUMENTS_BY_STATUS, labels=["status"])
        for status, count in sorted(self.stats.documents.items()):
            by_status.add_metric([status], count)
        yield by_status
        yield GaugeMetricFamily(*KB_OLDEST_WAITING_AGE, value=self.stats.oldest_waiting_age_s)


class _QueueCollector:
    def __init__(self, stats: QueueStats | None) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        if self.stats is None:
            return
        yield GaugeMetricFamily(*QUEUE_DEPTH, value=self.stats.depth)
        yield GaugeMetricFamily(*QUEUE_OLDEST_JOB_AGE, value=self.stats.oldest_waiting_age_s)


class _Scrape:
    def __init__(self, *sources: Collector) -> None:
        self.sources = sources

    def collect(self) -> Iterator[Metric]:
        for source in self.sources:
            yield from source.collect()


class MetricsEndpoint:
    """`GET /metrics`: Prometheus text, not in the OpenAPI schema. Restrict it at the proxy
    (it shows traffic, models and tenant ids)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        services = getattr(scope["app"].state, "services", None)
        if services is None:
            body = await render_metrics(None)
        else:
            body = await render_metrics(services.broker, services.knowledge)
        await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
        await send({"type": "http.response.body", "body": body})


async def start_metrics_server(broker: Broker, host: str, port: int) -> web.AppRunner:
    """A worker's own `GET /metrics` listener; stop it with `runner.cleanup()`."""
    from aiohttp import web  # only `chatplane worker` has a listener of its own

    async def metrics(_: web.Request) -> web.Response:
        body = await render_metrics(broker)
        return web.Response(body=body, headers={"content-type": CONTENT_TYPE})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


# The files of `serve --workers N`.


def prepare_multiprocess_dir(directory: str) -> None:
    """Create the directory the processes of one `serve` share, or empty it."""
    os.makedirs(directory, exist_ok=True)
    for path in glob.glob(os.path.join(directory, "*.db")):
        os.remove(path)


def forget_dead_processes(directory: str) -> None:
    """Drop the live gauges of processes that are gone (also after kill -9)."""
    for path in glob.glob(os.path.join(directory, "gauge_live*_*.db")):
        pid = os.path.basename(path).rsplit("_", 1)[-1].removesuffix(".db")
        if pid.isdigit() and not _alive(int(pid)):
            mark_process_dead(int(pid), directory)  # type: ignore[no-untyped-call]


def process_exiting() -> None:
    """Called when a serving process stops: its live gauges leave the sums."""
    if MULTIPROC_DIR is not None:
        mark_process_dead(os.getpid(), MULTIPROC_DIR)  # type: ignore[no-untyped-call]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
