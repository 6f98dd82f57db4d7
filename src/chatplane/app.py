"""The composition root: build every part from one Settings object and wire the app."""

from __future__ import annotations

import asyncio
import atexit
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute

from chatplane import __version__
from chatplane.admin.limits_router import router as limits_admin_router
from chatplane.admin.router import accept_router as invitation_accept_router
from chatplane.admin.router import router as admin_router
from chatplane.auth.keys_router import router as keys_router
from chatplane.auth.router import router as auth_router
from chatplane.auth.sso_router import router as sso_router
from chatplane.chat.router import router as chat_router
from chatplane.chat.sse import TurnEvents
from chatplane.chat.ws import ChatSocket
from chatplane.container import Services, build_services
from chatplane.errors import ChatplaneError
from chatplane.gateway.router import install_gateway
from chatplane.http.client import ClientResolver
from chatplane.http.direct import ChatplaneApp
from chatplane.http.middleware import HttpMiddleware
from chatplane.http.openapi import install_openapi
from chatplane.http.problems import install_error_handlers
from chatplane.knowledge.events import DocumentEvents
from chatplane.knowledge.router import router as knowledge_router
from chatplane.limits.middleware import LimitMiddleware
from chatplane.observability.exposition import MetricsEndpoint, process_exiting
from chatplane.ops.drain import Drain
from chatplane.ops.router import router as ops_router
from chatplane.providers.admin_router import router as models_admin_router
from chatplane.settings import Settings
from chatplane.usage.router import router as usage_router
from chatplane.web.router import router as web_router
from chatplane.web.router import static_files

# /readyz gives each dependency this long (the database ping gives up a little sooner).
READY_CHECK_TIMEOUT_S = 3.0


def create_app(
    settings: Settings | None = None,
    *,
    services: Services | None = None,
    migrate_embedded: bool = True,
) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = services is None
        if owned:
            app.state.services = await build_services(settings, migrate_embedded=migrate_embedded)
        # A server of its own (`serve`): SIGTERM drains before the server exits.
        undo_sigterm = app.state.drain.install_sigterm() if owned else None
        try:
            yield
        finally:
            if undo_sigterm is not None:
                undo_sigterm()
            if owned:
                await app.state.services.close()

    app = ChatplaneApp(
        title="chatplane",
        version=__version__,
        lifespan=lifespan,
        description="Self-hosted AI chat platform: native chat API and OpenAI-compatible gateway.",
        # chatplane's telemetry is its Prometheus metrics and structured logs. FastAPI's own
        # OpenTelemetry, on by default, looks up the global providers on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    app.state.drain = Drain(deadline_s=settings.drain_timeout_s)
    if services is not None:
        app.state.services = services
    install_error_handlers(app)

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> JSONResponse:
        """The process is alive."""
        return JSONResponse({"status": "ok"})

    @app.get("/readyz", tags=["ops"])
    async def readyz() -> JSONResponse:
        """The database and the broker answer, and the process is not draining."""
        current: Services = app.state.services
        checks: dict[str, str] = {}
        for name, ping in (("database", current.db.ping), ("broker", current.broker.ping)):
            try:
                # A dependency that does not answer (a cut network) must not hang the probe.
                async with asyncio.timeout(READY_CHECK_TIMEOUT_S):
                    await ping()
                checks[name] = "ok"
            except ChatplaneError as exc:
                checks[name] = exc.detail
            except TimeoutError:
                checks[name] = f"no answer within {READY_CHECK_TIMEOUT_S:g} s"
        draining = app.state.drain.draining
        if draining:
            checks["draining"] = "yes"
        ready = all(value == "ok" for key, value in checks.items() if key != "draining")
        ready = ready and not draining
        return JSONResponse(
            {"status": "ready" if ready else "unavailable", "checks": checks},
            status_code=200 if ready else 503,
        )

    app.include_router(auth_router)
    app.include_router(invitation_accept_router)
    app.include_router(keys_router)
    app.include_router(admin_router)
    app.include_router(limits_admin_router)
    app.include_router(sso_router)
    app.include_router(chat_router)
    app.include_router(models_admin_router)
    app.include_router(usage_router)
    app.include_router(ops_router)
    app.include_router(knowledge_router)
    event_streams = [
        Route("/api/turns/{turn_id}/events", TurnEvents(), methods=["GET"]),
        Route("/api/kb/{kb_id}/documents/{document_id}/events", DocumentEvents(), methods=["GET"]),
    ]
    app.router.routes.extend(event_streams)
    app.router.routes.append(WebSocketRoute("/api/ws", ChatSocket()))
    app.router.routes.append(Route("/metrics", MetricsEndpoint(), methods=["GET"]))
    # The /v1 routes and the event streams skip the framework's layers (chatplane.http.direct).
    app.direct_routes = [*install_gateway(app), *event_streams]
    install_openapi(app)
    app.include_router(web_router)
    app.mount("/static", static_files(), name="static")
    # Inside CORS (a preflight is not limited, a 429 carries the CORS headers) and inside
    # HttpMiddleware (the client address is resolved through trusted proxies first).
    app.add_middleware(LimitMiddleware)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_credentials=False,  # cross-origin callers use bearer tokens, not cookies
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=[
                "authorization",
                "content-type",
                "idempotency-key",
                "last-event-id",
                "x-request-id",
            ],
            expose_headers=[
                "x-request-id",
                "retry-after",
                "ratelimit-limit",
                "ratelimit-remaining",
                "ratelimit-reset",
            ],
            max_age=600,
        )
    app.add_middleware(
        HttpMiddleware,
        max_body_bytes=settings.max_request_bytes,
        max_upload_bytes=settings.upload_max_bytes,
        clients=ClientResolver(settings.trusted_proxies),
        access_log=settings.access_log,
    )
    return app


def serve_app() -> FastAPI:
    """The factory each `serve --workers N` process calls: settings from the environment;
    the database was migrated once, before the processes started."""
    from chatplane.process import process_settings

    settings = process_settings()
    atexit.register(process_exiting)  # its live gauges leave the sums of the other processes
    return create_app(settings, migrate_embedded=False)
