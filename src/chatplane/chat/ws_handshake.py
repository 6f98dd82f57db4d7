"""The handshake of `/api/ws`: which credential a connection brings, and whether its page
may use it (cross-site WebSocket hijacking)."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.websockets import WebSocket

from chatplane.auth.deps import SESSION_COOKIE, authenticate_request, require_scope
from chatplane.auth.principal import Principal
from chatplane.container import Services
from chatplane.errors import BadRequest, Forbidden, Unauthorized
from chatplane.settings import Settings

# Offered by browsers, which cannot set headers on a WebSocket: `new WebSocket(url,
# ["chatplane.v1", "base64url.bearer.chatplane." + base64url(token)])`. The server answers
# with `chatplane.v1` and never echoes the token (the scheme of Kubernetes' API server).
CHANNEL_PROTOCOL = "chatplane.v1"
BEARER_PROTOCOL = "base64url.bearer.chatplane."


@dataclass(frozen=True, slots=True)
class Credential:
    """What the handshake authenticated with, kept to check it again on every command (a
    revoked key or a logged-out session stops working on an open connection too)."""

    headers: Mapping[str, str]
    cookies: Mapping[str, str]
    subprotocol: str | None  # the one the server answers with

    async def principal(self, services: Services) -> Principal:
        principal = await authenticate_request(
            services, method="GET", headers=self.headers, cookies=self.cookies
        )
        return require_scope(principal, "chat")


def handshake_credential(websocket: WebSocket, settings: Settings) -> Credential:
    """The bearer token (Authorization header or the bearer subprotocol), else the session
    cookie, which only the app's own origin may use (cross-site WebSocket hijacking)."""
    offered: list[str] = websocket.scope.get("subprotocols") or []
    subprotocol = CHANNEL_PROTOCOL if CHANNEL_PROTOCOL in offered else None
    authorization = websocket.headers.get("authorization")
    bearer = [p[len(BEARER_PROTOCOL) :] for p in offered if p.startswith(BEARER_PROTOCOL)]
    if bearer and authorization is None:
        if subprotocol is None:  # a browser fails a handshake answered without a subprotocol
            raise BadRequest(
                f"Offer the subprotocol {CHANNEL_PROTOCOL!r} with the bearer one",
                code="subprotocol_required",
            )
        authorization = f"Bearer {_unbase64url(bearer[0])}"
    origin = websocket.headers.get("origin")
    if authorization is not None:
        if origin is not None and not _origin_allowed(websocket, origin, settings.cors_origins):
            raise Forbidden("This origin may not open the channel", code="origin_not_allowed")
        return Credential({"authorization": authorization}, {}, subprotocol)
    # Browsers always send Origin; only the app's own pages may use its cookie.
    if origin is not None and not _origin_allowed(websocket, origin, ()):
        raise Forbidden(
            "The session cookie works from this site only; elsewhere use a bearer token",
            code="origin_not_allowed",
        )
    cookie = websocket.cookies.get(SESSION_COOKIE, "")
    return Credential({}, {SESSION_COOKIE: cookie} if cookie else {}, subprotocol)


def _unbase64url(value: str) -> str:
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise Unauthorized(
            "The bearer subprotocol carries no base64url token", code="invalid_authorization"
        ) from exc


def _origin_allowed(websocket: WebSocket, origin: str, cors_origins: Collection[str]) -> bool:
    """A listed origin, or the page's host is the host the client connected to."""
    if "*" in cors_origins or origin in cors_origins:
        return True
    try:
        page = urlsplit(origin)
        host = urlsplit("//" + websocket.headers.get("host", ""))
        page_port, host_port = page.port, host.port
    except ValueError:
        return False
    if page.scheme not in ("http", "https") or not page.hostname:
        return False
    if page.hostname != host.hostname:
        return False
    # A proxy may pass the host without its port (nginx's `$host`): the name decides then.
    default_port = 443 if page.scheme == "https" else 80
    return host_port is None or (page_port or default_port) == host_port
