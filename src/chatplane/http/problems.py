"""Turn errors into JSON problems (`/api`) or OpenAI's error shape (`/v1`), in one place."""

from __future__ import annotations

from typing import Any

import orjson
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from chatplane.errors import ChatplaneError

log = structlog.get_logger("chatplane.http")

REQUEST_PARTS = frozenset({"body", "query", "path", "header", "cookie"})
OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "not_found_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def problem_response(
    path: str,
    *,
    status: int,
    code: str,
    title: str,
    detail: str,
    extra: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    if path.startswith("/v1/"):
        body: dict[str, Any] = {
            "error": {
                "message": detail,
                "type": OPENAI_TYPES.get(status, "api_error"),
                "param": (extra or {}).get("field"),
                "code": code,
            }
        }
    else:
        body = {"type": "about:blank", "status": status, "code": code, "title": title}
        body["detail"] = detail
        body.update(extra or {})
    return Response(
        orjson.dumps(body),
        status_code=status,
        media_type="application/problem+json"
        if not path.startswith("/v1/")
        else "application/json",
        headers=headers,
    )


def error_response(path: str, exc: ChatplaneError) -> Response:
    """The problem for `exc`. Its `retry_after` becomes `Retry-After`; `_headers` (a dict)
    are sent as they are; other extras are fields of the body."""
    headers: dict[str, str] = dict(exc.extra.get("_headers") or {})
    if "retry_after" in exc.extra:
        headers["Retry-After"] = str(exc.extra["retry_after"])
    return problem_response(
        path,
        status=exc.status,
        code=exc.code,
        title=exc.title,
        detail=exc.detail,
        extra={k: v for k, v in exc.extra.items() if k != "retry_after" and k[0] != "_"},
        headers=headers or None,
    )


def internal_error_response(path: str) -> Response:
    """The 500 for an exception nobody handled: no detail of it reaches the client."""
    return problem_response(
        path,
        status=500,
        code="internal_error",
        title="Internal error",
        detail="Something went wrong on our side; the error was logged",
    )


def log_unhandled(path: str) -> None:
    """Log the exception being handled (an error-level event: error tracking reports it)."""
    log.exception("unhandled_error", path=path)


def _field(location: tuple[int | str, ...]) -> str:
    """`("body", "messages", 0)` -> `messages.0`; the source of the value is not part of it."""
    parts = location[1:] if location and location[0] in REQUEST_PARTS else location
    return ".".join(str(part) for part in parts)


def install_error_handlers(app: FastAPI) -> None:
    async def on_chatplane_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ChatplaneError)
        if exc.status >= 500:
            log.warning("request_failed", code=exc.code, detail=exc.detail)
        return error_response(request.url.path, exc)

    async def on_validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = [
            {
                "field": _field(error["loc"]),
                "message": error["msg"],
                "type": error["type"],
            }
            for error in exc.errors()
        ]
        first = errors[0] if errors else {"field": None, "message": "invalid"}
        return problem_response(
            request.url.path,
            status=422,
            code="validation_error",
            title="The request is not valid",
            detail=f"{first['field'] or 'body'}: {first['message']}",
            extra={"errors": errors, "field": first["field"]},
        )

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return problem_response(
            request.url.path,
            status=exc.status_code,
            code=code,
            title=str(exc.detail),
            detail=str(exc.detail),
            headers=dict(exc.headers or {}),
        )

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        log_unhandled(request.url.path)
        return internal_error_response(request.url.path)

    app.add_exception_handler(ChatplaneError, on_chatplane_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)
