"""What logs and error reports never carry: secrets, always; message text (prompts,
answers), unless content logging is on (`CHATPLANE_LOG_CONTENT`). One set of rules for both."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

SECRET_KEYS = frozenset(
    {
        "password",
        "token",
        "access_token",
        "refresh_token",
        "api_key",
        "x_api_key",
        "authorization",
        "proxy_authorization",
        "cookie",
        "set_cookie",
        "secret",
        "client_secret",
    }
)
CONTENT_KEYS = frozenset({"content", "text", "prompt", "messages"})
REDACTED = "[redacted]"
CONTENT = "[content]"


def redact_fields(fields: MutableMapping[str, Any], *, keep_content: bool) -> None:
    """A log line's own fields, in place. Only the top level, by exact name: a line is flat,
    and this runs for every line."""
    for key in fields.keys() & SECRET_KEYS:
        fields[key] = REDACTED
    if not keep_content:
        for key in fields.keys() & CONTENT_KEYS:
            fields[key] = CONTENT


def redact_tree(value: Any, *, keep_content: bool) -> Any:
    """The same rules at every depth of nested dicts and lists (an error report's contexts,
    breadcrumbs, headers): names compare case-insensitively, with `-` as `_`."""
    if isinstance(value, dict):
        redacted: dict[Any, Any] = {}
        for key, item in value.items():
            name = key.lower().replace("-", "_") if isinstance(key, str) else key
            if name in SECRET_KEYS:
                redacted[key] = REDACTED
            elif not keep_content and name in CONTENT_KEYS:
                redacted[key] = CONTENT
            else:
                redacted[key] = redact_tree(item, keep_content=keep_content)
        return redacted
    if isinstance(value, list | tuple):
        return [redact_tree(item, keep_content=keep_content) for item in value]
    return value
