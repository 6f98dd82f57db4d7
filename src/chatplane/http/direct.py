"""Direct routes: the `/v1` hot path skips the framework's layers.

A FastAPI request crosses Starlette's `ServerErrorMiddleware`, FastAPI's exception
telemetry and body-limit middleware, `ExceptionMiddleware` (one more `send` wrapper per
chunk), `AsyncExitStackMiddleware` and the router's matching before it reaches an endpoint.
The gateway's endpoints are plain ASGI apps that answer their own errors, so none of that
does anything for them but cost CPU per request and per chunk.

`ChatplaneApp` puts one dispatch at the outermost layer: a request whose exact path and
method name a direct route goes through the app's own middleware (request id, metrics,
access log, security headers, CORS, per-address limits and `RateLimit-*` headers: the same
classes with the same arguments, in the same order) straight to the endpoint; every other
request goes through the full stack as before. The routes stay in the router too (the
OpenAPI schema, the 405 of another method, a request under a `root_path`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from chatplane.http.problems import log_unhandled


class ChatplaneApp(FastAPI):
    """FastAPI with direct routes (`direct_routes`, set before the first request)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.direct_routes: Sequence[Route] = ()

    def build_middleware_stack(self) -> ASGIApp:
        full = super().build_middleware_stack()
        if not self.direct_routes:
            return full
        direct: ASGIApp = _call_endpoint
        for cls, args, kwargs in reversed(self.user_middleware):
            direct = cls(direct, *args, **kwargs)
        return DirectRoutes(full, direct, self.direct_routes)


class DirectRoutes:
    """Sends a request for a direct route (exact path and method) to `direct`, the
    endpoint inside the app's own middleware; anything else to `full`."""

    def __init__(self, full: ASGIApp, direct: ASGIApp, routes: Sequence[Route]) -> None:
        self.full = full
        self.direct = direct
        self.routes: dict[tuple[str, str], Route] = {
            (route.path, method): route for route in routes for method in route.methods or ()
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope.get("root_path"):
            route = self.routes.get((scope["path"], scope["method"]))
            if route is not None:
                # What the router sets: the metrics label the request by its route.
                scope["route"] = route
                scope["endpoint"] = route.endpoint
                scope["path_params"] = {}
                try:
                    await self.direct(scope, receive, send)
                except Exception:
                    # Logged (and reported) as the full stack's error handler does;
                    # `HttpMiddleware` has sent the 500 if the response had not started.
                    log_unhandled(scope["path"])
                    raise
                return
        await self.full(scope, receive, send)


async def _call_endpoint(scope: Scope, receive: Receive, send: Send) -> None:
    await scope["route"].app(scope, receive, send)
