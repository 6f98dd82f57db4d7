"""Error reports to a Sentry-compatible service, when `CHATPLANE_SENTRY_DSN` is set.

Reported: every error-level log event (an unexpected exception behind a 500, a crashed job,
a crashed background reader), with its exception when it has one, and what the standard
library's loggers (uvicorn, asyncio) log at ERROR. Expected failures are warnings and are
not reported: provider errors, 4xx problems, outages answered with 503.

A report is redacted like a log line (`chatplane.observability.redaction`): no secrets,
tokens, cookies or authorization headers, no request body, no local variables, and no
message text unless `CHATPLANE_LOG_CONTENT` is on. It is tagged with the request, tenant,
user (its opaque id) and turn ids that the log context holds.

`sentry_sdk` is imported only by `init_error_tracking`, with a DSN: without one, this module
is not even imported (see `configure_logging`), so it costs nothing."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any, cast

import structlog

from chatplane import __version__
from chatplane.errors import ChatplaneError
from chatplane.observability.redaction import SECRET_KEYS, redact_tree
from chatplane.settings import Settings

if TYPE_CHECKING:
    from types import ModuleType

    from sentry_sdk._types import Event, Hint

INSTALL = "pip install 'chatplane[sentry]'"
# Log context fields that become tags, to find the request, tenant, user or turn of a report.
TAG_KEYS = ("request_id", "tenant_id", "user_id", "turn_id", "job_id", "document_id")
ERROR_LEVELS = frozenset({"error", "critical"})
# A log event's fields that are not its data.
LOG_META = frozenset({"event", "level", "timestamp", "exc_info", "exception", "stack_info"})
# SQLAlchemy puts a failed statement's values in its message: message text, hashes, emails.
SQL_PARAMETERS = re.compile(r"\n\[parameters: .*?(?=\n\(Background on this error|\Z)", re.DOTALL)
# What the SDK's own scrubber drops too, before our rules run.
SCRUBBED_KEYS = sorted(SECRET_KEYS | {"x_forwarded_for", "ip_address", "remote_addr"})

_reporting = False


class ErrorTrackingUnavailable(ChatplaneError):
    code = "error_tracking_unavailable"
    title = f"CHATPLANE_SENTRY_DSN is set but sentry-sdk is not installed: {INSTALL}"


def _sentry_sdk() -> ModuleType:
    try:
        import sentry_sdk
    except ImportError as exc:
        raise ErrorTrackingUnavailable() from exc
    return sentry_sdk


def check_error_tracking(settings: Settings) -> None:
    """Raise `ErrorTrackingUnavailable` when a DSN is set and the SDK is missing (for a
    process that starts others, which report on their own)."""
    if settings.sentry_dsn:
        _sentry_sdk()


def init_error_tracking(settings: Settings) -> bool:
    """Start reporting from this process, once, at start; False when no DSN is set."""
    global _reporting
    if not settings.sentry_dsn:
        return False
    sentry_sdk = _sentry_sdk()
    from sentry_sdk.integrations.logging import LoggingIntegration
    from sentry_sdk.scrubber import EventScrubber

    sentry_sdk.init(
        dsn=settings.sentry_dsn,
        release=f"chatplane@{__version__}",
        environment=settings.sentry_environment,
        # `send_default_pii` stays unset, which is off (newer SDKs deprecate setting it):
        # no user details, IP addresses, cookies or headers collected by the SDK itself.
        include_local_variables=False,  # locals hold passwords, keys and prompts
        max_request_body_size="never",
        # The web framework, database, Redis and HTTP client integrations would wrap the hot
        # path (and attach request bodies); errors reach us through the logs instead.
        auto_enabling_integrations=False,
        integrations=[LoggingIntegration(level=logging.INFO, event_level=logging.ERROR)],
        event_scrubber=EventScrubber(denylist=SCRUBBED_KEYS, recursive=True),
        before_send=ReportScrubber(keep_content=settings.log_content),
    )
    _reporting = True
    return True


def stop_error_tracking(timeout_s: float = 2.0) -> None:
    """Send what is queued and stop reporting (tests; process exit does it by itself)."""
    global _reporting
    if not _reporting:
        return
    _reporting = False
    import sentry_sdk

    sentry_sdk.get_client().close(timeout=timeout_s)
    sentry_sdk.get_global_scope().set_client(None)


def report_error_event(
    _: Any, __: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """A structlog processor, after the redactor: an error-level event becomes a report,
    with its exception (`log.exception`) or as a message."""
    if _reporting and event.get("level") in ERROR_LEVELS:
        _report(event)
    return event


def _report(event: MutableMapping[str, Any]) -> None:
    import sentry_sdk
    from sentry_sdk.utils import capture_internal_exceptions

    with capture_internal_exceptions():  # a report that fails must not fail the log call
        name = str(event.get("event"))
        fields = {key: value for key, value in event.items() if key not in LOG_META}
        tags = {key: str(fields[key]) for key in TAG_KEYS if fields.get(key) is not None}
        contexts = {"log": {"event": name, **fields}}
        error = _exception(event.get("exc_info"))
        if error is None:
            sentry_sdk.capture_message(name, level="error", tags=tags, contexts=contexts)
        else:
            sentry_sdk.capture_exception(error, tags=tags, contexts=contexts)


def _exception(exc_info: Any) -> BaseException | None:
    if isinstance(exc_info, BaseException):
        return exc_info
    if isinstance(exc_info, tuple):
        return cast(BaseException | None, exc_info[1])
    return sys.exc_info()[1] if exc_info else None


class ReportScrubber:
    """The `before_send` hook: the log redaction rules on every report, from our log events
    or not, and the tags of the log context where the report was made."""

    def __init__(self, *, keep_content: bool) -> None:
        self.keep_content = keep_content

    def __call__(self, event: Event, _: Hint) -> Event | None:
        report = cast(dict[str, Any], event)
        self._tag(report)
        request = report.get("request")
        if isinstance(request, dict):  # method and path only: no body, headers or query
            url = str(request.get("url") or "").split("?", 1)[0]
            report["request"] = {"method": request.get("method"), "url": url}
        for error in report.get("exception", {}).get("values", []):
            if not self.keep_content and isinstance(error.get("value"), str):
                error["value"] = SQL_PARAMETERS.sub("\n[parameters: [content]]", error["value"])
            for frame in (error.get("stacktrace") or {}).get("frames", []):
                frame.pop("vars", None)
        for part in ("extra", "contexts"):
            if part in report:
                report[part] = redact_tree(report[part], keep_content=self.keep_content)
        breadcrumbs = report.get("breadcrumbs")
        if isinstance(breadcrumbs, dict):
            breadcrumbs["values"] = [
                redact_tree(crumb, keep_content=self.keep_content)
                for crumb in breadcrumbs.get("values", [])
            ]
        return event

    def _tag(self, report: dict[str, Any]) -> None:
        tags = report.setdefault("tags", {})
        context = structlog.contextvars.get_contextvars()
        for key in TAG_KEYS:
            if key not in tags and context.get(key) is not None:
                tags[key] = str(context[key])
        # The opaque user id only: no email, no IP address.
        if "user_id" in tags:
            report["user"] = {"id": tags["user_id"]}
        else:
            report.pop("user", None)
