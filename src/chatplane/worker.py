"""`chatplane worker`: a process that runs turns from the broker until SIGTERM."""

from __future__ import annotations

import asyncio
import signal

import structlog

from chatplane.container import build_services
from chatplane.observability.exposition import start_metrics_server
from chatplane.settings import Settings

log = structlog.get_logger("chatplane.worker")


async def run_worker(settings: Settings, *, stop: asyncio.Event | None = None) -> None:
    """Run until SIGTERM/SIGINT (or `stop`), then stop taking turns, let running ones
    finish within `drain_timeout_s`, and hand the rest back to the queue."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    services = await build_services(
        settings, run_turns=True, migrate_embedded=False, process_kind="worker"
    )
    assert services.worker is not None
    metrics = None
    if settings.worker_metrics_port:
        metrics = await start_metrics_server(
            services.broker, settings.host, settings.worker_metrics_port
        )
    log.info(
        "worker_started",
        consumer=services.worker.consumer,
        concurrency=settings.turn_concurrency,
        metrics_port=settings.worker_metrics_port or None,
    )
    try:
        await stop.wait()
        log.info("worker_draining", running=services.worker.running_turns)
    finally:
        await services.close(drain_s=settings.drain_timeout_s)
        if metrics is not None:
            await metrics.cleanup()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    log.info("worker_stopped")
