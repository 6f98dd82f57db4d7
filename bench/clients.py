"""The requests each scenario makes, as `RequestFn`s: an OpenAI streaming chat completion
and a native chat turn (new conversation, post a message, follow the SSE to the end).

They check the answer as they read it (status, `[DONE]`, the usage chunk, the number of
content chunks, the terminal event), so a fast wrong answer counts as an error.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from bench.loadgen import ProtocolError, Sample, require_loopback

PROMPT = "Say something for the benchmark."
ERROR_BODY_CHARS = 200


@dataclass(frozen=True, slots=True)
class SseEvent:
    event: str
    data: bytes


class SseReader:
    """Splits a byte stream into server-sent events (LF line ends, as both the fake
    upstream and chatplane write them). Comments, `retry:` and `id:`-only blocks carry no
    data and are skipped."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[SseEvent]:
        *blocks, self._buffer = (self._buffer + chunk).split(b"\n\n")
        events: list[SseEvent] = []
        for block in blocks:
            event = "message"
            data: list[bytes] = []
            for line in block.split(b"\n"):
                if line.startswith(b"data:"):
                    data.append(line[6:] if line[5:6] == b" " else line[5:])
                elif line.startswith(b"event:"):
                    event = line[6:].strip().decode()
            if data:
                events.append(SseEvent(event, b"\n".join(data)))
        return events


async def _expect_status(response: aiohttp.ClientResponse, status: int) -> None:
    if response.status != status:
        body = (await response.read())[:ERROR_BODY_CHARS].decode(errors="replace")
        raise ProtocolError(f"http_{response.status}", body)


def _json_headers(api_key: str | None) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


class ChatCompletionStream:
    """`POST {base}/chat/completions` with `stream` and `include_usage`; TTFT is the first
    chunk whose delta has non-empty content."""

    def __init__(
        self,
        base_url: str,
        *,
        model: str,
        api_key: str | None,
        expected_chunks: int | None,
    ) -> None:
        self.url = require_loopback(base_url) + "/chat/completions"
        self.headers = _json_headers(api_key)
        self.expected_chunks = expected_chunks
        self.body = orjson.dumps(
            {
                "model": model,
                "messages": [{"role": "user", "content": PROMPT}],
                "stream": True,
                "stream_options": {"include_usage": True},
            }
        )

    async def __call__(self, session: aiohttp.ClientSession) -> Sample:
        started = time.perf_counter()
        ttft: float | None = None
        chunks = 0
        saw_usage = saw_done = False
        reader = SseReader()
        async with session.post(self.url, data=self.body, headers=self.headers) as response:
            await _expect_status(response, 200)
            async for data in response.content.iter_any():
                for event in reader.feed(data):
                    if event.data == b"[DONE]":
                        saw_done = True
                        continue
                    payload: dict[str, Any] = orjson.loads(event.data)
                    if "error" in payload:
                        raise ProtocolError("stream_error", event.data.decode(errors="replace"))
                    if _delta_content(payload):
                        chunks += 1
                        if ttft is None:
                            ttft = time.perf_counter() - started
                    saw_usage = saw_usage or bool(payload.get("usage"))
        total = time.perf_counter() - started
        if not saw_done:
            raise ProtocolError("no_done")
        if not saw_usage:
            raise ProtocolError("no_usage")
        if self.expected_chunks is not None and chunks != self.expected_chunks:
            raise ProtocolError("chunk_count", f"{chunks} != {self.expected_chunks}")
        return Sample(ttft_s=ttft, total_s=total, chunks=chunks)


def _delta_content(payload: dict[str, Any]) -> str | None:
    choices = payload.get("choices")
    if not choices:
        return None
    delta = choices[0].get("delta") or {}
    content = delta.get("content")
    return content if isinstance(content, str) and content else None


class NativeTurn:
    """A native chat turn. Creating the conversation is setup (`setup_s`); TTFT and total
    are timed from the `POST .../messages` to the first `message.delta` and to
    `turn.completed`."""

    def __init__(
        self, base_url: str, *, model: str, api_key: str, expected_chunks: int | None
    ) -> None:
        self.base_url = require_loopback(base_url)
        self.headers = _json_headers(api_key)
        self.expected_chunks = expected_chunks
        self.conversation_body = orjson.dumps({"model": model})
        self.message_body = orjson.dumps({"content": PROMPT})

    async def __call__(self, session: aiohttp.ClientSession) -> Sample:
        setup_started = time.perf_counter()
        async with session.post(
            f"{self.base_url}/api/conversations",
            data=self.conversation_body,
            headers=self.headers,
        ) as response:
            await _expect_status(response, 201)
            conversation_id = (await response.json(loads=orjson.loads))["id"]
        started = time.perf_counter()
        async with session.post(
            f"{self.base_url}/api/conversations/{conversation_id}/messages",
            data=self.message_body,
            headers=self.headers,
        ) as response:
            await _expect_status(response, 202)
            events_url = (await response.json(loads=orjson.loads))["events_url"]
        ttft, total, chunks = await self._follow(session, self.base_url + events_url, started)
        if self.expected_chunks is not None and chunks != self.expected_chunks:
            raise ProtocolError("chunk_count", f"{chunks} != {self.expected_chunks}")
        return Sample(ttft_s=ttft, total_s=total, chunks=chunks, setup_s=started - setup_started)

    async def _follow(
        self, session: aiohttp.ClientSession, url: str, started: float
    ) -> tuple[float | None, float, int]:
        ttft: float | None = None
        total: float | None = None
        chunks = 0
        reader = SseReader()
        async with session.get(url, headers=self.headers) as response:
            await _expect_status(response, 200)
            async for data in response.content.iter_any():
                for event in reader.feed(data):
                    if event.event == "message.delta":
                        chunks += 1
                        if ttft is None:
                            ttft = time.perf_counter() - started
                    elif event.event == "turn.completed":
                        total = time.perf_counter() - started
                    elif event.event in ("turn.failed", "turn.cancelled"):
                        raise ProtocolError(event.event, event.data.decode(errors="replace"))
        if total is None:
            raise ProtocolError("no_turn_completed")
        return ttft, total, chunks
