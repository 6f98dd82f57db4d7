"""The OpenAI-compatible adapter: OpenAI, vLLM, Ollama, LM Studio, any base URL.

`base_url` is the API root the vendor documents, including its version segment
(`https://api.openai.com/v1`, `http://localhost:11434/v1`); paths are appended to it.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import TYPE_CHECKING, Any

import orjson

from chatplane.errors import ProviderError
from chatplane.providers.protocol import CompletionRequest, Finish, StreamItem, TextDelta, Usage
from chatplane.providers.upstream import (
    error_from_response,
    parse_json,
    provider_label,
    release_when_drained,
    send,
    sse_events,
    transport_errors,
)

if TYPE_CHECKING:
    import aiohttp

DEFAULT_OPENAI_BASE_URL = "https://api.openai.com/v1"
LIST_MODELS_TIMEOUT_S = 10.0
_DONE = b"[DONE]"


class OpenAIProvider:
    def __init__(
        self,
        *,
        session: aiohttp.ClientSession,
        base_url: str = DEFAULT_OPENAI_BASE_URL,
        api_key: str | None = None,
        name: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.name = name or provider_label("openai", self.base_url)
        self._session = session
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"

    @property
    def chat_completions_url(self) -> str:
        return f"{self.base_url}/chat/completions"

    async def open_chat_completions(self, body: bytes) -> aiohttp.ClientResponse:
        """POST a caller-built JSON body as is and return the response, whatever its
        status, for the caller to stream with `resp.content.iter_any()` and release.
        Transport failures raise `ProviderError` (kind "connect") or `ProviderTimeout`."""
        return await send(
            self._session,
            "POST",
            self.chat_completions_url,
            provider=self.name,
            headers=self._headers,
            body=body,
        )

    async def list_models(self, *, timeout_s: float = LIST_MODELS_TIMEOUT_S) -> list[str]:
        """Model ids from `GET {base}/models`, in the upstream's order."""
        import aiohttp  # loaded already: `self._session` is an aiohttp session

        response = await send(
            self._session,
            "GET",
            f"{self.base_url}/models",
            provider=self.name,
            headers=self._headers,
            client_timeout=aiohttp.ClientTimeout(total=timeout_s),
        )
        try:
            if response.status >= 400:
                raise await error_from_response(response, self.name)
            with transport_errors(self.name, streaming=True):
                body = await response.read()
        finally:
            response.release()
        payload = parse_json(body, self.name)
        entries = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(entries, list):
            raise ProviderError(
                f"{self.name}: /models answered without a 'data' list", kind="upstream_error"
            )
        ids = [e["id"] for e in entries if isinstance(e, dict) and isinstance(e.get("id"), str)]
        return list(dict.fromkeys(ids))

    async def stream(self, request: CompletionRequest) -> AsyncGenerator[StreamItem, None]:
        response = await self.open_chat_completions(orjson.dumps(chat_body(request)))
        try:
            if response.status >= 400:
                raise await error_from_response(response, self.name)
            if response.content_type == "application/json":
                # Some servers ignore `stream` and answer with one JSON document.
                with transport_errors(self.name, streaming=True):
                    body = await response.read()
                for item in self._items_from_completion(parse_json(body, self.name)):
                    yield item
            else:
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
        reason: str | None = None
        usage: Usage | None = None
        done = False
        async with aclosing(sse_events(response, self.name)) as events:
            async for event in events:
                if event.data == _DONE:
                    done = True
                    break
                chunk = parse_json(event.data, self.name)
                if not isinstance(chunk, dict):
                    continue
                _raise_stream_error(chunk, self.name)
                text, chunk_reason = _delta(chunk)
                if text:
                    yield TextDelta(text)
                reason = chunk_reason or reason
                usage = _usage(chunk.get("usage")) or usage
        if not done and reason is None:
            raise ProviderError(
                f"{self.name}: the upstream ended the stream before it finished",
                kind="upstream_error",
            )
        yield Finish(reason=reason or "stop", usage=usage)

    def _items_from_completion(self, payload: Any) -> list[StreamItem]:
        if not isinstance(payload, dict):
            raise ProviderError(f"{self.name}: unexpected completion body", kind="upstream_error")
        _raise_stream_error(payload, self.name)
        choice = _first_choice(payload)
        message = choice.get("message")
        text = message.get("content") if isinstance(message, dict) else None
        items: list[StreamItem] = [TextDelta(text)] if isinstance(text, str) and text else []
        reason = choice.get("finish_reason")
        items.append(
            Finish(
                reason=reason if isinstance(reason, str) else "stop",
                usage=_usage(payload.get("usage")),
            )
        )
        return items

    async def close(self) -> None:
        """Nothing to do: the HTTP session is the process's, closed by its owner."""


def chat_body(request: CompletionRequest) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": request.model,
        "messages": [{"role": m.role, "content": m.content} for m in request.messages],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if request.max_tokens is not None:
        body["max_tokens"] = request.max_tokens
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if request.stop:
        body["stop"] = list(request.stop)
    return body


def _first_choice(chunk: dict[str, Any]) -> dict[str, Any]:
    choices = chunk.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        return choices[0]
    return {}


def _delta(chunk: dict[str, Any]) -> tuple[str | None, str | None]:
    choice = _first_choice(chunk)
    delta = choice.get("delta")
    text = delta.get("content") if isinstance(delta, dict) else None
    reason = choice.get("finish_reason")
    return (
        text if isinstance(text, str) else None,
        reason if isinstance(reason, str) else None,
    )


def _usage(raw: Any) -> Usage | None:
    if not isinstance(raw, dict):
        return None
    prompt, completion = raw.get("prompt_tokens"), raw.get("completion_tokens")
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    return Usage(prompt_tokens=prompt, completion_tokens=completion)


def _raise_stream_error(chunk: dict[str, Any], provider: str) -> None:
    """vLLM, Ollama and OpenAI itself can report a failure inside a 200 stream."""
    error = chunk.get("error")
    if error is None:
        return
    message = error.get("message") if isinstance(error, dict) else error
    raise ProviderError(f"{provider}: upstream error mid-stream: {message}", kind="upstream_error")
