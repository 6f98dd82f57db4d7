"""The services of one process, built once from Settings (the composition root's parts)."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Awaitable
from dataclasses import dataclass

import structlog
from fastapi import Request

from chatplane.auth.audit import AuditLog
from chatplane.auth.oidc import OidcClient
from chatplane.auth.secrets import Passwords
from chatplane.auth.service import AuthService
from chatplane.auth.sessions import SessionService
from chatplane.broker import create_broker
from chatplane.broker.protocol import Broker
from chatplane.cache import Cache, create_cache
from chatplane.chat.runner import TurnRunner
from chatplane.chat.service import ChatService
from chatplane.chat.worker import TurnWorker
from chatplane.crypto import SecretBox, encryption_key
from chatplane.db.engine import Database, create_engine
from chatplane.errors import ChatplaneError
from chatplane.gateway.response_cache import ResponseCacheStore, create_response_cache
from chatplane.knowledge.blobs import BlobStore, create_blob_store
from chatplane.knowledge.embedders import Embedder, create_embedder
from chatplane.knowledge.index import KnowledgeIndex
from chatplane.knowledge.ingest import DocumentIngester
from chatplane.knowledge.reindex import REINDEX_JOB, Reindexer
from chatplane.knowledge.service import INGEST_JOB, KnowledgeService
from chatplane.limits import LimitStores, WindowCounter, create_limit_stores
from chatplane.limits.service import LimitService
from chatplane.ops.presence import Presence, ProcessKind, create_presence
from chatplane.providers.endpoints import ModelEndpointService
from chatplane.providers.http import UpstreamHttp
from chatplane.providers.registry import ModelRegistry, build_registry
from chatplane.settings import Settings
from chatplane.usage.journal import create_usage_journal
from chatplane.usage.recorder import UsageRecorder

log = structlog.get_logger("chatplane")

# How long one part may take to stop at shutdown before it is left behind (logged).
CLOSE_STEP_S = 10.0


@dataclass
class Services:
    settings: Settings
    db: Database
    broker: Broker
    http: UpstreamHttp
    registry: ModelRegistry
    auth: AuthService
    sessions: SessionService
    audit: AuditLog
    failures: WindowCounter
    limit_stores: LimitStores
    limits: LimitService
    cache: Cache
    chat: ChatService
    runner: TurnRunner
    usage: UsageRecorder
    oidc: OidcClient
    endpoints: ModelEndpointService
    blobs: BlobStore
    embedder: Embedder | None
    index: KnowledgeIndex
    knowledge: KnowledgeService
    ingester: DocumentIngester
    reindexer: Reindexer
    response_cache: ResponseCacheStore
    worker: TurnWorker | None = None
    presence: Presence | None = None

    async def close(self, *, drain_s: float = 5.0) -> None:
        """Stop every part, in order. Each stop is bounded (`CLOSE_STEP_S`, the worker's
        drain on top): a part that does not stop in time is logged and left behind, so a
        process always gets to exit on SIGTERM."""
        if self.worker is not None:
            await _bounded("worker", self.worker.stop(deadline_s=drain_s), drain_s)
        if self.presence is not None:
            await _bounded("presence", self.presence.stop())
        await _bounded("endpoints", self.endpoints.close())
        await _bounded("usage", self.usage.close())
        await _bounded("response_cache", self.response_cache.close())
        await _bounded("registry", self.registry.close())
        if self.embedder is not None:
            await _bounded("embedder", self.embedder.close())
        await _bounded("blobs", self.blobs.close())
        await _bounded("http", self.http.close())
        await _bounded("limits", self.limits.close())
        await _bounded("cache", self.cache.close())
        await _bounded("limit_stores", self.limit_stores.close())
        await _bounded("broker", self.broker.close())
        await _bounded("db", self.db.close())


async def _bounded(part: str, stop: Awaitable[object], extra_s: float = 0.0) -> None:
    try:
        async with asyncio.timeout(CLOSE_STEP_S + extra_s):
            await stop
    except TimeoutError:
        log.error("close_step_timed_out", part=part, after_s=CLOSE_STEP_S + extra_s)


async def build_services(
    settings: Settings,
    *,
    run_turns: bool | None = None,
    migrate_embedded: bool = True,
    process_kind: ProcessKind = "api",
) -> Services:
    """Open every part. Turns run in this process in the embedded shape (no Redis).

    `serve` migrates the embedded SQLite before it hands its process over to the server
    and passes `migrate_embedded=False`, so Alembic never loads into the server (about
    10 MB)."""
    settings.signing_key  # noqa: B018 - made (and kept in the data dir) now, not on first login
    if settings.is_embedded_db and migrate_embedded:
        from chatplane.db import migrate

        await migrate.upgrade(settings.resolved_database_url)
    db = Database(create_engine(settings))
    broker = create_broker(settings, key_prefix=settings.redis_prefix)
    await broker.start()
    http = UpstreamHttp(settings)  # the aiohttp session comes with the first upstream
    registry = await build_registry(settings, http)
    limit_stores = create_limit_stores(settings)
    cache = create_cache(settings)
    await cache.start()
    limits = LimitService(settings, db, limit_stores, cache=cache)
    blobs = create_blob_store(settings)
    embedder = create_embedder(settings, http)
    index = KnowledgeIndex(db, embedder)
    runner = TurnRunner(db, broker, registry, settings, limits, index)
    audit = AuditLog(db)
    knowledge = KnowledgeService(db, broker, blobs, index, audit, settings)
    passwords = Passwords(settings)
    auth = AuthService(db, settings, passwords, audit, cache)
    failures = limit_stores.counter
    services = Services(
        settings=settings,
        db=db,
        broker=broker,
        http=http,
        registry=registry,
        auth=auth,
        sessions=SessionService(db, settings, passwords, auth, failures, audit),
        audit=audit,
        failures=failures,
        limit_stores=limit_stores,
        limits=limits,
        cache=cache,
        chat=ChatService(db, broker, registry, limits, settings, knowledge),
        runner=runner,
        usage=UsageRecorder(db, create_usage_journal(settings)),
        oidc=OidcClient(settings, http),
        endpoints=ModelEndpointService(
            db, registry, SecretBox(encryption_key(settings)), audit, cache
        ),
        blobs=blobs,
        embedder=embedder,
        index=index,
        knowledge=knowledge,
        ingester=DocumentIngester(db, broker, blobs, index, settings),
        reindexer=Reindexer(db, broker, index, settings),
        response_cache=create_response_cache(settings),
    )
    await services.endpoints.load()
    services.endpoints.start_refresh()
    services.usage.start()
    if run_turns if run_turns is not None else settings.redis_url is None:
        services.worker = TurnWorker(
            broker,
            runner,
            concurrency=settings.turn_concurrency,
            max_attempts=settings.turn_max_attempts,
            handlers={INGEST_JOB: services.ingester, REINDEX_JOB: services.reindexer},
        )
        services.worker.start()
        await _schedule_reindex(services.reindexer)
    services.presence = create_presence(settings, process_kind, services.worker)
    # What start-up made lives as long as the process: keep it out of the collector, so
    # a full collection under load takes milliseconds instead of stalling every stream
    # for ~100 ms.
    gc.collect()
    gc.freeze()
    return services


async def _schedule_reindex(reindexer: Reindexer) -> None:
    """Knowledge bases whose vectors are not the configured embedder's get re-indexed in
    the background; a broker that does not answer now only delays it to the next start."""
    try:
        await reindexer.schedule()
    except ChatplaneError as exc:
        log.warning("kb_reindex_not_scheduled", error=exc.detail)


async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services
