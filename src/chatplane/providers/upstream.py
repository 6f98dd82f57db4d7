"""What every HTTP adapter shares: sending a request, turning transport failures and
error statuses into `ProviderError`, reading SSE events, and giving the connection back.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson

from chatplane.errors import ProviderError, ProviderTimeout
from chatplane.providers.sse import ServerSentEvent, SSEDecoder, SSEProtocolError

if TYPE_CHECKING:
    import aiohttp

ERROR_BODY_LIMIT = 64 * 1024
ERROR_MESSAGE_LIMIT = 500
# After the last event, how long to wait for the end of the body so the connection can
# go back to the pool; past this we close it instead.
DRAIN_TIMEOUT_S = 1.0


def provider_label(kind: str, base_url: str) -> str:
    """A name for logs, metrics and error details: the vendor kind and the upstream host."""
    return f"{kind}@{urlsplit(base_url).netloc or base_url}"


def kind_for_status(status: int) -> str:
    if status in (401, 403):
        return "auth"
    if status == 404:
        return "not_found"
    if status == 429:
        return "rate_limited"
    if status in (408, 504):
        return "timeout"
    if status >= 500:
        return "upstream_error"
    return "bad_request"


@contextmanager
def transport_errors(provider: str, *, streaming: bool) -> Iterator[None]:
    """Map aiohttp failures. Before the response (`streaming=False`) a lost connection
    means the upstream cannot be reached (kind "connect"); during it, that it broke off."""
    try:
        yield
    except TimeoutError as exc:  # also aiohttp's ServerTimeoutError / ConnectionTimeoutError
        phase = "stream" if streaming else "request"
        raise ProviderTimeout(f"{provider}: the upstream {phase} timed out") from exc
    except SSEProtocolError as exc:
        raise ProviderError(f"{provider}: bad event stream ({exc})", kind="upstream_error") from exc
    except Exception as exc:
        error = _client_error(exc, provider, streaming=streaming)
        if error is None:
            raise
        raise error from exc


def _client_error(exc: Exception, provider: str, *, streaming: bool) -> ProviderError | None:
    # Imported here, not with the module: only a request through an aiohttp session gets
    # here, and the model adapters stay importable in a process that never makes one.
    import aiohttp

    if isinstance(exc, aiohttp.ClientConnectionError):
        if streaming:
            return ProviderError(
                f"{provider}: the upstream connection broke off mid-stream ({exc})",
                kind="upstream_error",
            )
        return ProviderError(f"{provider}: cannot reach the upstream ({exc})", kind="connect")
    if isinstance(exc, aiohttp.ClientError):
        return ProviderError(f"{provider}: upstream failure ({exc})", kind="upstream_error")
    return None


async def send(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    provider: str,
    headers: Mapping[str, str],
    body: bytes | None = None,
    client_timeout: aiohttp.ClientTimeout | None = None,
) -> aiohttp.ClientResponse:
    """Send and return the response once its headers arrived; the caller releases it."""
    with transport_errors(provider, streaming=False):
        if client_timeout is None:
            return await session.request(method, url, headers=headers, data=body)
        return await session.request(
            method, url, headers=headers, data=body, timeout=client_timeout
        )


async def read_limited(response: aiohttp.ClientResponse, limit: int = ERROR_BODY_LIMIT) -> bytes:
    body = bytearray()
    async for chunk in response.content.iter_any():
        body += chunk
        if len(body) >= limit:
            break
    return bytes(body[:limit])


def upstream_message(body: bytes) -> tuple[str, str | None]:
    """(message, error type) from an OpenAI, Anthropic, vLLM or Ollama error body."""
    try:
        payload: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body.decode("utf-8", "replace").strip()
        return (text[:ERROR_MESSAGE_LIMIT] or "no error message"), None
    error = payload.get("error", payload) if isinstance(payload, dict) else payload
    if isinstance(error, dict):
        message = error.get("message") or error.get("detail") or orjson.dumps(error).decode()
        error_type = error.get("type") if isinstance(error.get("type"), str) else None
        return str(message)[:ERROR_MESSAGE_LIMIT], error_type
    return str(error)[:ERROR_MESSAGE_LIMIT], None


async def error_from_response(response: aiohttp.ClientResponse, provider: str) -> ProviderError:
    """Read an error response (bounded) and describe it; the caller closes the response."""
    with transport_errors(provider, streaming=True):
        body = await read_limited(response)
    message, error_type = upstream_message(body)
    extra: dict[str, Any] = {"upstream_status": response.status}
    if error_type:
        extra["upstream_type"] = error_type
    if retry_after := response.headers.get("Retry-After"):
        extra["retry_after"] = retry_after
    return ProviderError(
        f"{provider} answered HTTP {response.status}: {message}",
        kind=kind_for_status(response.status),
        **extra,
    )


async def sse_events(
    response: aiohttp.ClientResponse, provider: str
) -> AsyncGenerator[ServerSentEvent, None]:
    """Whole events as they arrive, however the reads cut them. Use with `aclosing`."""
    decoder = SSEDecoder()
    with transport_errors(provider, streaming=True):
        async for chunk in response.content.iter_any():
            for event in decoder.feed(chunk):
                yield event
        for event in decoder.flush():
            yield event


async def release_when_drained(response: aiohttp.ClientResponse) -> None:
    """Keep the connection for reuse when the body ends soon after the last event."""
    try:
        async with asyncio.timeout(DRAIN_TIMEOUT_S):
            while await response.content.readany():
                pass
    except BaseException as exc:
        response.close()
        if isinstance(exc, TimeoutError) or _is_client_error(exc):
            return
        raise
    response.release()


def _is_client_error(exc: BaseException) -> bool:
    import aiohttp  # loaded already: `exc` came from an aiohttp response

    return isinstance(exc, aiohttp.ClientError)


def parse_json(data: bytes, provider: str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        snippet = data[:200].decode("utf-8", "replace")
        raise ProviderError(
            f"{provider}: the upstream sent invalid JSON in its stream: {snippet!r}",
            kind="upstream_error",
        ) from exc
