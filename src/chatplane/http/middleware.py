"""Pure ASGI middleware (no BaseHTTPMiddleware): request ids, body size limit, headers."""

from __future__ import annotations

import contextlib
import re
import secrets
from time import perf_counter

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chatplane.errors import PayloadTooLarge
from chatplane.http.client import ClientResolver
from chatplane.http.problems import error_response, internal_error_response
from chatplane.observability.metrics import HttpMetrics

REQUEST_ID_HEADER = b"x-request-id"
# Probes come every few seconds: their lines are debug, not info.
QUIET_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})
# The multipart route that takes document uploads, and what a multipart body adds around
# the file (boundaries, part headers).
UPLOAD_PATH = re.compile(r"^/api/kb/[^/]+/documents$")
UPLOAD_ENVELOPE_BYTES = 64 * 1024
access_log = structlog.get_logger("chatplane.access")
HSTS = (b"strict-transport-security", b"max-age=31536000; includeSubDomains")
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
]
CSP = (
    b"default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    b"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


class BodyTooLarge(Exception):
    pass


class HttpMiddleware:
    """Gives every request an id (from `X-Request-ID` or new), echoes it, binds it to logs,
    takes the client address and scheme from trusted proxies, refuses bodies over the limit
    with 413, adds security headers (HSTS on https), and records the request's metrics
    (counted and timed to the response's last byte, streams included). The access line
    also has the time to the response's first body byte (`first_byte_ms`): a stream's
    first token."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        clients: ClientResolver,
        access_log: bool = True,
        max_upload_bytes: int | None = None,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        # Document uploads (multipart) may be larger: the file's limit plus the envelope.
        self.max_upload_bytes = (max_upload_bytes or max_body_bytes) + UPLOAD_ENVELOPE_BYTES
        self.clients = clients
        self.metrics = HttpMetrics()
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            self.clients.rewrite(scope)
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = perf_counter()
        self.clients.rewrite(scope)
        request_id = _request_id(scope)
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        path: str = scope["path"]

        limit = self.max_body_bytes
        if scope["method"] == "POST" and UPLOAD_PATH.match(path):
            limit = self.max_upload_bytes
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await self._too_large(path, send, request_id, limit)
            self._done(scope, 413, began, None)
            return

        received = 0
        started = False
        status = 500  # unless a response starts: the app raised
        first_byte: float | None = None

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge
            return message

        is_html = not path.startswith(("/api/", "/v1/"))
        https = scope.get("scheme") == "https"

        async def send_with_headers(message: Message) -> None:
            nonlocal started, status, first_byte
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((REQUEST_ID_HEADER, request_id.encode()))
                headers.extend(SECURITY_HEADERS)
                if is_html:
                    headers.append((b"content-security-policy", CSP))
                if https:
                    headers.append(HSTS)
                message["headers"] = headers
            elif first_byte is None and message.get("body"):
                first_byte = perf_counter()
            await send(message)

        try:
            await self.app(scope, limited_receive, send_with_headers)
        except BodyTooLarge:
            if not started:
                status = 413
                await self._too_large(path, send, request_id, limit)
        except Exception:
            # The outermost error handler (outside this middleware) logs it and would send
            # its 500 without our headers: send it here, with them, and let it log. The
            # error stays the one raised, even when the client is gone and the send fails.
            if not started:
                with contextlib.suppress(Exception):
                    await internal_error_response(path)(scope, _no_receive, send_with_headers)
            raise
        finally:
            self._done(scope, status, began, first_byte)

    def _done(self, scope: Scope, status: int, began: float, first_byte: float | None) -> None:
        """Metrics and the access log line of a finished request. The line is in the same
        format as every other: the request id, and the tenant and user once the request was
        authenticated, come from the context."""
        seconds = perf_counter() - began
        route = self.metrics.observe(scope, status, seconds)
        if not self.access_log:
            return
        client = scope.get("client")
        emit = access_log.debug if route in QUIET_ROUTES else access_log.info
        emit(
            "request",
            method=scope["method"],
            route=route,
            status=status,
            duration_ms=round(seconds * 1000, 2),
            first_byte_ms=None if first_byte is None else round((first_byte - began) * 1000, 2),
            client=client[0] if client else None,
        )

    async def _too_large(self, path: str, send: Send, request_id: str, limit: int) -> None:
        if limit == self.max_body_bytes:
            exc = PayloadTooLarge(f"The request body is over {limit // 1024} KB")
        else:
            megabytes = (limit - UPLOAD_ENVELOPE_BYTES) // (1024 * 1024)
            exc = PayloadTooLarge(f"The file is over {megabytes} MB", code="upload_too_large")
        response = error_response(path, exc)
        response.headers["x-request-id"] = request_id
        response.headers["connection"] = "close"
        await response({"type": "http"}, _no_receive, send)


async def _no_receive() -> Message:  # pragma: no cover - never awaited for a plain response
    return {"type": "http.disconnect"}


def _request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == REQUEST_ID_HEADER:
            text: str = value.decode("latin-1")
            if 0 < len(text) <= 128 and text.isprintable():
                return text
            break
    return secrets.token_hex(12)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
