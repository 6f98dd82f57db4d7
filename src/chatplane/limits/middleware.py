"""Per-address limits by zone of routes, and the `RateLimit-*` headers of every limited
response (pure ASGI: it adds one check per response start, nothing per body chunk)."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chatplane.errors import ChatplaneError
from chatplane.http.problems import error_response
from chatplane.limits.protocol import RateDecision
from chatplane.limits.service import STATE_KEY, rate_headers, remember, zone_of


class LimitMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] == "OPTIONS":  # preflights are free
            await self.app(scope, receive, send)
            return
        zone = zone_of(scope["path"], scope["method"])
        if zone is None:
            await self.app(scope, receive, send)
            return
        state: dict[str, object] = scope.setdefault("state", {})
        client = scope.get("client")
        try:
            decision = await scope["app"].state.services.limits.check_ip(
                zone, client[0] if client else "unknown"
            )
        except ChatplaneError as exc:
            await error_response(scope["path"], exc)(scope, receive, send)
            return
        remember(state, decision)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                current = state.get(STATE_KEY)
                headers = message.get("headers", ())
                # A refusal carries the headers of the rule that refused; keep those.
                if isinstance(current, RateDecision) and not any(
                    name.lower() == b"ratelimit-limit" for name, _ in headers
                ):
                    message["headers"] = [*headers, *rate_headers(current)]
            await send(message)

        await self.app(scope, receive, send_with_headers)
