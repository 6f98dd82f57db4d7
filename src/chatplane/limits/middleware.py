"""Per-address limits by zone of routes, and the `RateLimit-*` headers of every limited
response (pure ASGI: it adds one check per response start, nothing per body chunk).

On a route that admits a model call (`ADMITTING_ROUTES`), the check is not made here: it is
left in the request's state (`pending_address`) for the admission to count in the same store
call, one round trip instead of two. A response of such a route that starts before anything
counted it (the request ended before its admission: a missing key, a bad body) is checked
here then, as on any other route, and replaced by the 429 when the address is over its
limit."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chatplane.errors import ChatplaneError
from chatplane.http.problems import error_response
from chatplane.limits.protocol import RateDecision
from chatplane.limits.service import (
    ADMITTING_ROUTES,
    STATE_KEY,
    AddressCheck,
    rate_headers,
    remember,
    zone_of,
)

# Where the address check left to the route is kept in the request's state.
ADDRESS_KEY = "chatplane.ratelimit.address"


def pending_address(scope: Scope) -> AddressCheck | None:
    """The per-address check this request's route is to count with its own (None when the
    middleware made it already, or the zone has no such limit)."""
    address = scope.get("state", {}).get(ADDRESS_KEY)
    return address if isinstance(address, AddressCheck) else None


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
        ip = client[0] if client else "unknown"
        limits = scope["app"].state.services.limits
        address: AddressCheck | None = None
        if (scope["method"], scope["path"]) in ADMITTING_ROUTES:
            address = state[ADDRESS_KEY] = AddressCheck(zone, ip)
        else:
            try:
                remember(state, await limits.check_ip(zone, ip))
            except ChatplaneError as exc:
                await error_response(scope["path"], exc)(scope, receive, send)
                return
        refused = False

        async def send_with_headers(message: Message) -> None:
            nonlocal refused
            if refused:  # the route's own answer, replaced by the address's 429
                return
            if message["type"] == "http.response.start":
                if address is not None and not address.taken:  # ended before its admission
                    address.taken = True
                    try:
                        remember(state, await limits.check_ip(zone, ip))
                    except ChatplaneError as exc:
                        refused = True
                        await error_response(scope["path"], exc)(scope, receive, send)
                        return
                current = state.get(STATE_KEY)
                headers = message.get("headers", ())
                # A refusal carries the headers of the rule that refused; keep those.
                if isinstance(current, RateDecision) and not any(
                    name.lower() == b"ratelimit-limit" for name, _ in headers
                ):
                    message["headers"] = [*headers, *rate_headers(current)]
            await send(message)

        await self.app(scope, receive, send_with_headers)
