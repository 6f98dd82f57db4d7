"""Direct routes: the hot paths (`/v1`, the SSE streams of turns and documents) skip the
framework's layers.

A FastAPI request crosses Starlette's `ServerErrorMiddleware`, FastAPI's exception
telemetry and body-limit middleware, `ExceptionMiddleware` (one more `send` wrapper per
chunk), `AsyncExitStackMiddleware` and the router's matching before it reaches an endpoint.
The gateway's endpoints and the event streams are plain ASGI apps that answer their own
errors, so none of that does anything for them but cost CPU per request and per chunk (an
SSE stream sends one per event).

`ChatplaneApp` puts one dispatch at the outermost layer: a request whose path and method
match a direct route (a dict look-up for a fixed path, the route's own pattern for one with
parameters) goes through the app's own middleware (request id, metrics,
access log, security headers, CORS, per-address limits and `RateLimit-*` headers: the same
classes with the same arguments, in the same order) straight to the endpoint; every other
request goes through the full stack as before. The routes stay in the router too (the
OpenAPI schema, the 405 of another method, a request under a `root_path`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI
from starlette.routing import Match, Route
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
    """Sends a request for a direct route (path and method) to `direct`, the endpoint
    inside the app's own middleware; anything else to `full`."""

    def __init__(self, full: ASGIApp, direct: ASGIApp, routes: Sequence[Route]) -> None:
        self.full = full
        self.direct = direct
        self.routes: dict[tuple[str, str], Route] = {
            (route.path, method): route
            for route in routes
            if not route.param_convertors
            for method in route.methods or ()
        }
        self.patterns = [route for route in routes if route.param_convertors]

    def _match(self, scope: Scope) -> Route | None:
        """The direct route for this request, with the scope set as the router sets it
        (the metrics label the request by its route)."""
        route = self.routes.get((scope["path"], scope["method"]))
        if route is not None:
            scope["route"] = route
            scope["endpoint"] = route.endpoint
            scope["path_params"] = {}
            return route
        for route in self.patterns:
            match, child = route.matches(scope)
            if match is Match.FULL:
                scope.update(child)
                scope["route"] = route
                return route
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        direct = scope["type"] == "http" and not scope.get("root_path") and self._match(scope)
        if not direct:
            await self.full(scope, receive, send)
            return
        try:
            await self.direct(scope, receive, send)
        except Exception:
            # Logged (and reported) as the full stack's error handler does; `HttpMiddleware`
            # has sent the 500 if the response had not started.
            log_unhandled(scope["path"])
            raise


async def _call_endpoint(scope: Scope, receive: Receive, send: Send) -> None:
    await scope["route"].app(scope, receive, send)
