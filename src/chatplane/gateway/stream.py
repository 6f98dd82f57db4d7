"""OpenAI wire format for providers that do not speak it (the mock, Anthropic), and the
usage scan of upstream streams that do."""

from __future__ import annotations

import secrets
import time
from typing import Any

import orjson

from chatplane.providers.protocol import Usage

DONE = b"data: [DONE]\n\n"
USAGE_KEY = b'"usage":'
CONTENT_KEY = b'"content":'
TAIL_BYTES = 8192


class ChunkWriter:
    """Pre-builds the constant parts of each chunk, so a delta costs one JSON string dump."""

    def __init__(self, model: str) -> None:
        self.id = "chatcmpl-" + secrets.token_hex(12)
        self.created = int(time.time())
        self.model = model
        head = orjson.dumps(
            {"id": self.id, "object": "chat.completion.chunk", "created": self.created}
        )[:-1]
        self._head = b"data: " + head + b',"model":' + orjson.dumps(model) + b',"choices":['
        self._delta_head = self._head + b'{"index":0,"delta":{"content":'
        self._delta_tail = b'},"logprobs":null,"finish_reason":null}]}\n\n'

    def role(self) -> bytes:
        return (
            self._head
            + b'{"index":0,"delta":{"role":"assistant","content":""},'
            + (b'"logprobs":null,"finish_reason":null}]}\n\n')
        )

    def delta(self, text: str) -> bytes:
        return self._delta_head + orjson.dumps(text) + self._delta_tail

    def finish(self, reason: str) -> bytes:
        return (
            self._head
            + b'{"index":0,"delta":{},"logprobs":null,"finish_reason":'
            + orjson.dumps(reason)
            + b"}]}\n\n"
        )

    def usage(self, usage: Usage) -> bytes:
        return self._head + b'],"usage":' + orjson.dumps(usage_json(usage)) + b"}\n\n"

    def extension(self, extension: dict[str, Any]) -> bytes:
        return extension_chunk(self.id, self.created, self.model, extension)

    def completion(
        self, text: str, reason: str, usage: Usage, extension: dict[str, Any] | None = None
    ) -> bytes:
        body: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": reason,
                }
            ],
            "usage": usage_json(usage),
        }
        if extension is not None:
            body["chatplane"] = extension
        return orjson.dumps(body)


def extension_chunk(id: str, created: int, model: str, extension: dict[str, Any]) -> bytes:
    """A last chunk with no choices that carries our extension's answer (the citations)."""
    chunk = {
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [],
        "chatplane": extension,
    }
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def usage_json(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


def error_event(code: str, message: str) -> bytes:
    payload = {"error": {"message": message, "type": "api_error", "param": None, "code": code}}
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def usage_from_tail(tail: bytes) -> Usage | None:
    """The usage of an upstream stream, from the last event that carries one."""
    at = tail.rfind(USAGE_KEY)
    while at != -1:
        start = tail.rfind(b"data:", 0, at)
        end = tail.find(b"\n", at)
        if start != -1:
            usage = usage_from_json(tail[start + 5 : end if end != -1 else len(tail)])
            if usage is not None:
                return usage
        at = tail.rfind(USAGE_KEY, 0, at)
    return None


def usage_from_json(raw: bytes) -> Usage | None:
    try:
        payload: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    usage = payload.get("usage") if isinstance(payload, dict) else None
    if not isinstance(usage, dict):
        return None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    return Usage(prompt_tokens=prompt, completion_tokens=completion)
