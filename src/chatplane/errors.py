"""One error hierarchy. Each error has a stable `code` and an HTTP status; handlers in
`chatplane.http.problems` turn it into a JSON problem (or OpenAI's error shape on /v1)."""

from __future__ import annotations

from typing import Any


class ChatplaneError(Exception):
    code = "internal_error"
    status = 500
    title = "Internal error"

    def __init__(self, detail: str | None = None, *, code: str | None = None, **extra: Any) -> None:
        self.detail = detail or self.title
        if code is not None:
            self.code = code
        self.extra = extra
        super().__init__(self.detail)


class BadRequest(ChatplaneError):
    code = "bad_request"
    status = 400
    title = "Bad request"


class ValidationFailed(ChatplaneError):
    code = "validation_error"
    status = 422
    title = "The request is not valid"


class Unauthorized(ChatplaneError):
    code = "unauthorized"
    status = 401
    title = "Authentication required"


class InvalidCredentials(Unauthorized):
    code = "invalid_credentials"
    title = "Wrong email or password"


class Forbidden(ChatplaneError):
    code = "forbidden"
    status = 403
    title = "Not allowed"


class NotFound(ChatplaneError):
    code = "not_found"
    status = 404
    title = "Not found"


class ModelNotFound(NotFound):
    code = "model_not_found"
    title = "Unknown model"


class Conflict(ChatplaneError):
    code = "conflict"
    status = 409
    title = "Conflict"


class PayloadTooLarge(ChatplaneError):
    code = "payload_too_large"
    status = 413
    title = "Request body too large"


class BudgetExceeded(ChatplaneError):
    code = "budget_exceeded"
    status = 402
    title = "The budget does not cover this request"


class TooManyRequests(ChatplaneError):
    code = "rate_limited"
    status = 429
    title = "Too many requests"


class ServiceUnavailable(ChatplaneError):
    code = "service_unavailable"
    status = 503
    title = "Service unavailable"


class DatabaseUnavailable(ServiceUnavailable):
    """The database cannot be reached (refused, reset, timed out). Temporary: the request
    can be sent again, and nothing of it was half-written."""

    code = "database_unavailable"
    title = "The database is unreachable"


class ProviderError(ChatplaneError):
    """An upstream model call failed. `kind` says how, for turn failures and metrics."""

    code = "provider_error"
    status = 502
    title = "The model provider failed"

    def __init__(
        self,
        detail: str | None = None,
        *,
        kind: str = "error",
        code: str | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail, code=code, **extra)
        self.kind = kind


class ProviderTimeout(ProviderError):
    code = "provider_timeout"
    status = 504
    title = "The model provider did not answer in time"

    def __init__(self, detail: str | None = None, **extra: Any) -> None:
        super().__init__(detail, kind="timeout", **extra)
