"""The `chatplane.knowledge_base_ids` extension on an OpenAI-compatible upstream's answer:
the text it wrote is read as it passes, and the citations of the passages it was given are
added, to the completion as a `chatplane` field, to a stream as a last chunk before `[DONE]`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson
import structlog

from chatplane.gateway.stream import extension_chunk
from chatplane.providers.sse import SSEDecoder

log = structlog.get_logger("chatplane.gateway")

Citations = Callable[[str], dict[str, Any]]  # the answer's text -> the `chatplane` field


def cite_completion(body: bytes, citations: Citations) -> bytes:
    """An upstream's completion with our citations added (as it was when unreadable)."""
    try:
        payload = orjson.loads(body)
        text = payload["choices"][0]["message"]["content"] or ""
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
        log.warning("gateway_citations_unreadable_body")
        return body
    payload["chatplane"] = citations(str(text))
    return orjson.dumps(payload)


class CitedStream:
    """An upstream's event stream passed on event by event (not byte for byte: its `[DONE]`
    must come after our citations chunk), keeping its text and the head of its first event
    (id, created, model) for the citations chunk."""

    def __init__(self) -> None:
        self._decoder = SSEDecoder()
        self._parts: list[str] = []
        self._head: dict[str, Any] = {}
        self.deltas = 0  # content events passed on so far

    def feed(self, chunk: bytes) -> bytes:
        """What to send on for these bytes (possibly nothing yet)."""
        return b"".join(self._pass(event.data) for event in self._decoder.feed(chunk))

    def flush(self) -> bytes:
        """The events still held at the end of the upstream's stream."""
        return b"".join(self._pass(event.data) for event in self._decoder.flush())

    def citations_chunk(self, model: str, citations: Citations) -> bytes:
        """The last chunk: the citations of everything the stream said."""
        created = self._head.get("created")
        return extension_chunk(
            str(self._head.get("id", "")),
            created if isinstance(created, int) else int(time.time()),
            str(self._head.get("model", model)),
            citations("".join(self._parts)),
        )

    def _pass(self, data: bytes) -> bytes:
        if data == b"[DONE]":
            return b""
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            event = None
        if isinstance(event, dict):
            if not self._head:
                self._head.update(
                    {k: event[k] for k in ("id", "created", "model") if event.get(k) is not None}
                )
            for choice in event.get("choices") or ():
                delta = choice.get("delta") if isinstance(choice, dict) else None
                content = delta.get("content") if isinstance(delta, dict) else None
                if isinstance(content, str) and content:
                    self._parts.append(content)
                    self.deltas += 1
        return b"data: " + data + b"\n\n"
