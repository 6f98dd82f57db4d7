"""The Anthropic Messages API adapter (`POST {base}/v1/messages`, streamed)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from typing import TYPE_CHECKING, Any

import orjson

from chatplane.errors import ProviderError
from chatplane.providers.protocol import (
    ChatMessage,
    CompletionRequest,
    Finish,
    StreamItem,
    TextDelta,
    Usage,
)
from chatplane.providers.upstream import (
    error_from_response,
    parse_json,
    provider_label,
    release_when_drained,
    send,
    sse_events,
)

if TYPE_CHECKING:
    import aiohttp

DEFAULT_ANTHROPIC_BASE_URL = "https://api.anthropic.com"
ANTHROPIC_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 1024

# Anthropic's stop reasons in the vocabulary the rest of chatplane (and OpenAI) uses.
STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
ERROR_KINDS = {
    "authentication_error": "auth",
    "permission_error": "auth",
    "not_found_error": "not_found",
    "rate_limit_error": "rate_limited",
    "invalid_request_error": "bad_request",
    "request_too_large": "bad_request",
    "overloaded_error": "upstream_error",
    "api_error": "upstream_error",
}


class AnthropicProvider:
    def __init__(
        self,
        *,
        session: aiohttp.ClientSession,
        api_key: str,
        base_url: str = DEFAULT_ANTHROPIC_BASE_URL,
        default_max_tokens: int = DEFAULT_MAX_TOKENS,
        name: str | None = None,
    ) -> None:
        base = base_url.rstrip("/")
        # Accept the root with or without the version segment.
        self.base_url = base.removesuffix("/v1")
        self.name = name or provider_label("anthropic", self.base_url)
        self.default_max_tokens = default_max_tokens
        self._session = session
        self._headers = {
            "Content-Type": "application/json",
            "x-api-key": api_key,
            "anthropic-version": ANTHROPIC_VERSION,
        }

    @property
    def messages_url(self) -> str:
        return f"{self.base_url}/v1/messages"

    async def stream(self, request: CompletionRequest) -> AsyncGenerator[StreamItem, None]:
        body = orjson.dumps(messages_body(request, self.default_max_tokens))
        response = await send(
            self._session,
            "POST",
            self.messages_url,
            provider=self.name,
            headers=self._headers,
            body=body,
        )
        try:
            if response.status >= 400:
                raise await error_from_response(response, self.name)
            async with aclosing(self._read_stream(response)) as items:
                async for item in items:
                    yield item
        except BaseException:
            response.close()  # at once: cancelled or failed, no more tokens for nobody
            raise
        await release_when_drained(response)

    async def _read_stream(
        self, response: aiohttp.ClientResponse
    ) -> AsyncGenerator[StreamItem, None]:
        prompt_tokens: int | None = None
        completion_tokens = 0
        stop_reason: str | None = None
        finished = False
        async with aclosing(sse_events(response, self.name)) as events:
            async for event in events:
                payload = parse_json(event.data, self.name)
                if not isinstance(payload, dict):
                    continue
                kind = payload.get("type") or event.event
                if kind == "content_block_delta":
                    delta = _obj(payload.get("delta"))
                    if delta.get("type") == "text_delta" and delta.get("text"):
                        yield TextDelta(str(delta["text"]))
                elif kind == "message_start":
                    usage = _obj(_obj(payload.get("message")).get("usage"))
                    prompt_tokens = _input_tokens(usage)
                    completion_tokens = _int(usage.get("output_tokens"))
                elif kind == "message_delta":
                    stop_reason = _obj(payload.get("delta")).get("stop_reason") or stop_reason
                    usage = _obj(payload.get("usage"))
                    # Output tokens are cumulative; newer versions may restate input.
                    completion_tokens = _int(usage.get("output_tokens")) or completion_tokens
                    if _input_tokens(usage):
                        prompt_tokens = _input_tokens(usage)
                elif kind == "message_stop":
                    finished = True
                    break
                elif kind == "error":
                    raise _stream_error(payload.get("error"), self.name)
        if not finished:
            raise ProviderError(
                f"{self.name}: the upstream ended the stream before message_stop",
                kind="upstream_error",
            )
        usage_total = (
            Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
            if prompt_tokens is not None
            else None
        )
        yield Finish(
            reason=STOP_REASONS.get(stop_reason or "end_turn", stop_reason or "stop"),
            usage=usage_total,
            extra={"upstream_stop_reason": stop_reason} if stop_reason else {},
        )

    async def close(self) -> None:
        """Nothing to do: the HTTP session is the process's, closed by its owner."""


def messages_body(request: CompletionRequest, default_max_tokens: int) -> dict[str, Any]:
    system = "\n\n".join(m.content for m in request.messages if m.role == "system")
    body: dict[str, Any] = {
        "model": request.model,
        "max_tokens": request.max_tokens or default_max_tokens,
        "messages": _conversation(request.messages),
        "stream": True,
    }
    if system:
        body["system"] = system
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if request.stop:
        body["stop_sequences"] = list(request.stop)
    return body


def _conversation(messages: Sequence[ChatMessage]) -> list[dict[str, str]]:
    """User and assistant turns; consecutive turns of one role are joined, as the
    Messages API expects them to alternate."""
    turns: list[dict[str, str]] = []
    for message in messages:
        if message.role == "system":
            continue
        if turns and turns[-1]["role"] == message.role:
            turns[-1]["content"] += "\n\n" + message.content
        else:
            turns.append({"role": message.role, "content": message.content})
    return turns


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _int(value: Any) -> int:
    return value if isinstance(value, int) else 0


def _input_tokens(usage: dict[str, Any]) -> int:
    """Every prompt token the request consumed, cached or not."""
    return (
        _int(usage.get("input_tokens"))
        + _int(usage.get("cache_creation_input_tokens"))
        + _int(usage.get("cache_read_input_tokens"))
    )


def _stream_error(error: Any, provider: str) -> ProviderError:
    error = error if isinstance(error, dict) else {}
    error_type = str(error.get("type") or "api_error")
    message = error.get("message") or "no error message"
    return ProviderError(
        f"{provider}: upstream error mid-stream ({error_type}): {message}",
        kind=ERROR_KINDS.get(error_type, "upstream_error"),
        upstream_type=error_type,
    )
