"""Parse and check an OpenAI chat completion request by hand: no pydantic on the hot path."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import orjson

from chatplane.errors import BadRequest
from chatplane.providers.protocol import ChatMessage, CompletionRequest, Role

# Roles we pass on, mapped to what every provider understands.
ROLE_MAP: dict[str, Role] = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "user",
}
ROLES = frozenset(ROLE_MAP)
EXTENSION = "chatplane"  # our namespaced body field (the openai SDK's `extra_body`)
MAX_KNOWLEDGE_BASES = 10  # as the native API (chat.schemas)


@dataclass(frozen=True, slots=True)
class GatewayRequest:
    body: dict[str, Any]
    model: str
    messages: list[ChatMessage]
    stream: bool
    include_usage: bool
    max_tokens: int | None
    temperature: float | None
    top_p: float | None
    stop: list[str] | None
    knowledge_base_ids: list[str] | None = None  # `chatplane.knowledge_base_ids`
    cache: bool | None = None  # `chatplane.cache`: None leaves it to the tenant's choice

    @property
    def may_cache(self) -> bool:
        """Whether the response cache may answer (or keep) this request, before the
        tenant's choice is known: never when it says `cache: false`, always when it says
        `cache: true`, else only when deterministic (temperature 0). Answers grounded in
        knowledge bases depend on documents the key cannot see change: never cached."""
        if self.cache is False or self.knowledge_base_ids is not None:
            return False
        return self.cache is True or self.temperature == 0.0

    def with_sources(self, system: str) -> GatewayRequest:
        """The request with a system message of retrieved passages first (in the body
        forwarded upstream too)."""
        body = {
            **self.body,
            "messages": [{"role": "system", "content": system}, *self.body["messages"]],
        }
        return dataclasses.replace(
            self, body=body, messages=[ChatMessage(role="system", content=system), *self.messages]
        )

    def last_user_message(self) -> str:
        for message in reversed(self.messages):
            if message.role == "user":
                return message.content
        return ""

    def completion(self, upstream_model: str) -> CompletionRequest:
        return CompletionRequest(
            model=upstream_model,
            messages=self.messages,
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            stop=self.stop,
        )


def _bad(message: str, param: str | None) -> BadRequest:
    return BadRequest(message, code="invalid_request", field=param)


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if isinstance(content, list):
        parts: list[str] = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise _bad("Only text content parts are supported", where)
            text = part.get("text")
            if not isinstance(text, str):
                raise _bad("A text part needs a string 'text'", where)
            parts.append(text)
        return "".join(parts)
    raise _bad("'content' must be a string or a list of text parts", where)


def _number(body: dict[str, Any], name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise _bad(f"'{name}' must be a number between {low} and {high}", name)
    return float(value)


def _knowledge_base_ids(extension: Any) -> list[str] | None:
    where = f"{EXTENSION}.knowledge_base_ids"
    if not isinstance(extension, dict):
        raise _bad(f"'{EXTENSION}' must be an object", EXTENSION)
    ids = extension.get("knowledge_base_ids")
    if ids is None:
        return None
    if (
        not isinstance(ids, list)
        or not all(isinstance(i, str) and i for i in ids)
        or len(ids) > MAX_KNOWLEDGE_BASES
    ):
        raise _bad(f"'{where}' must be up to {MAX_KNOWLEDGE_BASES} knowledge base ids", where)
    return list(dict.fromkeys(ids)) or None


def _cache_flag(extension: Any) -> bool | None:
    if not isinstance(extension, dict):
        raise _bad(f"'{EXTENSION}' must be an object", EXTENSION)
    flag = extension.get("cache")
    if flag is not None and not isinstance(flag, bool):
        raise _bad(f"'{EXTENSION}.cache' must be true or false", f"{EXTENSION}.cache")
    return flag


def parse_request(raw: bytes) -> GatewayRequest:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _bad(f"The body is not valid JSON: {exc}", None) from exc
    if not isinstance(body, dict):
        raise _bad("The body must be a JSON object", None)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("'model' is required", "model")
    raw_messages = body.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise _bad("'messages' must be a non-empty array", "messages")
    messages: list[ChatMessage] = []
    for index, message in enumerate(raw_messages):
        where = f"messages.{index}"
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise _bad(f"Each message needs a role of {sorted(ROLES)}", f"{where}.role")
        role = ROLE_MAP[message["role"]]
        messages.append(ChatMessage(role=role, content=_text(message.get("content"), where)))
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _bad("'stream' must be a boolean", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise _bad("'stream_options' must be an object", "stream_options")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
    ):
        raise _bad("'max_tokens' must be a positive integer", "max_tokens")
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and (
        not isinstance(stop, list) or not all(isinstance(s, str) for s in stop) or len(stop) > 4
    ):
        raise _bad("'stop' must be a string or up to 4 strings", "stop")
    extension = body.get(EXTENSION)
    return GatewayRequest(
        body=body,
        model=model,
        messages=messages,
        stream=stream,
        include_usage=bool(options.get("include_usage", False)),
        max_tokens=max_tokens,
        temperature=_number(body, "temperature", 0.0, 2.0),
        top_p=_number(body, "top_p", 0.0, 1.0),
        stop=stop,
        knowledge_base_ids=None if extension is None else _knowledge_base_ids(extension),
        cache=None if extension is None else _cache_flag(extension),
    )
