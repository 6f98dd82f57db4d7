"""The gateway's response cache: which requests it answers, under which key, the neutral
shape an answer is kept in, and how a kept answer is replayed (as a completion or a stream).

Nothing here runs for a request that is not cacheable (`GatewayRequest.may_cache`)."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from typing import Any

import orjson
import structlog

from chatplane.auth.principal import Principal
from chatplane.gateway.request import GatewayRequest
from chatplane.gateway.response_cache import ResponseCacheStore
from chatplane.gateway.stream import DONE, ChunkWriter
from chatplane.limits.service import TenantPolicy
from chatplane.observability import metrics
from chatplane.providers.protocol import Usage
from chatplane.providers.sse import SSEDecoder, SSEProtocolError

log = structlog.get_logger("chatplane.gateway.cache")

HEADER = b"x-chatplane-cache"
HIT = (HEADER, b"hit")
MISS = (HEADER, b"miss")
# Fields that do not change the answer (how it is delivered, who asked, our extension's
# switch); every other field of the body is part of the key.
NOT_IN_KEY = frozenset(
    {"stream", "stream_options", "user", "chatplane", "metadata", "store", "max_tokens",
     "max_completion_tokens", "stop"}
)  # fmt: skip
NUMBERS = ("temperature", "top_p", "presence_penalty", "frequency_penalty")
# Answers worth replaying: finished by the model (not cut by an error, not tool calls).
KEPT_FINISH_REASONS = frozenset({"stop", "length"})
FORMAT_VERSION = 1

# Writes still running after their request went away (kept so they are not collected).
_writes: set[asyncio.Task[None]] = set()


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    """An answer in a shape that replays as a completion or as a stream."""

    text: str
    finish_reason: str
    model: str
    usage: Usage

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "v": FORMAT_VERSION,
                "text": self.text,
                "finish_reason": self.finish_reason,
                "model": self.model,
                "usage": [self.usage.prompt_tokens, self.usage.completion_tokens],
            }
        )

    @classmethod
    def decode(cls, raw: bytes) -> CachedAnswer | None:
        try:
            data = orjson.loads(raw)
            if data["v"] != FORMAT_VERSION:
                return None
            prompt, completion = data["usage"]
            return cls(
                text=str(data["text"]),
                finish_reason=str(data["finish_reason"]),
                model=str(data["model"]),
                usage=Usage(int(prompt), int(completion)),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None

    def replay(self, *, stream: bool, include_usage: bool) -> bytes:
        """The answer as a new completion (or stream of chunks): a new id, the time now."""
        writer = ChunkWriter(self.model)
        if not stream:
            return writer.completion(self.text, self.finish_reason, self.usage)
        parts = [writer.role()]
        if self.text:
            parts.append(writer.delta(self.text))
        parts.append(writer.finish(self.finish_reason))
        if include_usage:
            parts.append(writer.usage(self.usage))
        parts.append(DONE)
        return b"".join(parts)


def opted_in(policy: TenantPolicy, principal: Principal) -> bool:
    """The key's own choice, else the tenant's (off unless chosen)."""
    choices = policy.response_cache
    if principal.api_key_id is not None and principal.api_key_id in choices:
        return choices[principal.api_key_id]
    return choices.get(principal.tenant_id, False)


def cache_key(tenant_id: str, request: GatewayRequest) -> str:
    """SHA-256 of the tenant and the normalized request: the same question in another
    tenant is another key."""
    fields: dict[str, Any] = {k: v for k, v in request.body.items() if k not in NOT_IN_KEY}
    for name in NUMBERS:  # 0 and 0.0 ask the same
        value = fields.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            fields[name] = float(value)
    fields["max_tokens"] = request.max_tokens
    fields["stop"] = request.stop
    fields["knowledge_base_ids"] = request.knowledge_base_ids
    normalized = orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(tenant_id.encode() + b"\0" + normalized).hexdigest()


async def look_up(store: ResponseCacheStore, key: str) -> CachedAnswer | None:
    raw = await store.get(key)
    answer = CachedAnswer.decode(raw) if raw is not None else None
    metrics.response_cache("hit" if answer is not None else "miss")
    return answer


async def keep(store: ResponseCacheStore, key: str, answer: CachedAnswer | None) -> None:
    """Keep an answer (None: the call gave none worth keeping). The write finishes even
    when the request is cancelled meanwhile (the client left after the last byte)."""
    if answer is None or answer.finish_reason not in KEPT_FINISH_REASONS:
        metrics.response_cache("skip")
        return
    raw = answer.encode()
    if len(raw) > store.max_entry_bytes:
        metrics.response_cache("skip")
        return
    task = asyncio.ensure_future(_write(store, key, raw))
    _writes.add(task)
    task.add_done_callback(_writes.discard)
    await asyncio.shield(task)


async def _write(store: ResponseCacheStore, key: str, raw: bytes) -> None:
    if await store.put(key, raw):
        metrics.response_cache("store", len(raw))


def answer_from_completion(body: bytes) -> CachedAnswer | None:
    """The answer of an upstream's `chat.completion` body, if it is one plain text choice."""
    try:
        payload = orjson.loads(body)
        (choice,) = payload["choices"]
        message = choice["message"]
        text, reason = message.get("content") or "", choice.get("finish_reason")
        usage = payload["usage"]
        prompt, completion = usage["prompt_tokens"], usage["completion_tokens"]
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        return None
    if message.get("tool_calls") or message.get("function_call") or message.get("refusal"):
        return None  # tool calls are not kept
    if not (isinstance(text, str) and isinstance(reason, str)):
        return None
    if not (isinstance(prompt, int) and isinstance(completion, int)):
        return None
    return CachedAnswer(text, reason, str(payload.get("model") or ""), Usage(prompt, completion))


class StreamCapture:
    """A reading of an upstream's SSE stream beside the bytes passed on: the text, the
    finish reason and the usage, or nothing when the stream is not one plain answer."""

    def __init__(self, model: str) -> None:
        self._decoder = SSEDecoder()
        self._parts: list[str] = []
        self._model = model
        self._reason: str | None = None
        self._usage: Usage | None = None
        self._unfit = False

    def feed(self, chunk: bytes) -> None:
        if self._unfit:
            return
        try:
            for event in self._decoder.feed(chunk):
                self._event(event.data)
        except SSEProtocolError:
            self._unfit = True

    def _event(self, data: bytes) -> None:
        if data == b"[DONE]":
            return
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            self._unfit = True
            return
        if not isinstance(event, dict) or event.get("error") is not None:
            self._unfit = True
            return
        if isinstance(event.get("model"), str):
            self._model = event["model"]
        usage = event.get("usage")
        if isinstance(usage, dict):
            prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
            if isinstance(prompt, int) and isinstance(completion, int):
                self._usage = Usage(prompt, completion)
        for choice in event.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                self._unfit = True  # n > 1
                return
            delta = choice.get("delta") or {}
            if delta.get("tool_calls") or delta.get("function_call") or delta.get("refusal"):
                self._unfit = True
                return
            content = delta.get("content")
            if isinstance(content, str):
                self._parts.append(content)
            if isinstance(choice.get("finish_reason"), str):
                self._reason = choice["finish_reason"]

    def answer(self) -> CachedAnswer | None:
        for event in self._decoder.flush():
            if not self._unfit:
                self._event(event.data)
        if self._unfit or self._reason is None or self._usage is None:
            return None
        return CachedAnswer("".join(self._parts), self._reason, self._model, self._usage)


__all__ = [
    "HIT",
    "MISS",
    "CachedAnswer",
    "StreamCapture",
    "answer_from_completion",
    "cache_key",
    "keep",
    "look_up",
    "opted_in",
]
