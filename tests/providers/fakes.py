"""Fake model vendors that speak the real wire formats over real HTTP on 127.0.0.1.

Reusable by any suite (the gateway's, the turn runner's):

    async with FakeOpenAI(chunks=["Hi", " there"], chunk_delay_s=0.01) as upstream:
        ... point an adapter or the gateway at upstream.base_url ...
        assert upstream.requests[0].json["stream"] is True

Every knob is a plain attribute, so a test can change the behaviour of a running server
(for instance make `/models` fail, then recover).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

from aiohttp import web

DISCONNECT_POLL_S = 0.01


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    # The server side of the TCP connection: the same object twice means the client
    # reused a pooled connection.
    connection: object = None

    @property
    def json(self) -> Any:
        return json.loads(self.body)


def sse(data: Any, event: str | None = None) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n".encode()


@dataclass
class FakeUpstream:
    """The server plumbing; subclasses add the vendor's routes."""

    chunk_delay_s: float = 0.0
    # Write each event in pieces of this many bytes (0: one write per event), pausing
    # `split_pause_s` between pieces so the client sees them in separate reads.
    split_bytes: int = 0
    split_pause_s: float = 0.002
    # Stop answering after this many content chunks (0: right after the headers) until
    # the server closes; or before sending any headers at all.
    stall_after_chunks: int | None = None
    stall_before_headers: bool = False
    # End the body cleanly after this many content chunks, without the closing events
    # (an upstream that stops mid-answer).
    end_after_chunks: int | None = None
    error_status: int | None = None
    error_body: Any = None
    api_key: str | None = None

    requests: list[RecordedRequest] = field(default_factory=list, init=False)
    disconnects: int = field(default=0, init=False)
    completed_streams: int = field(default=0, init=False)
    _runner: web.AppRunner | None = field(default=None, init=False, repr=False)
    _released: asyncio.Event = field(default_factory=asyncio.Event, init=False, repr=False)
    _port: int = field(default=0, init=False)

    def routes(self) -> list[web.RouteDef]:
        raise NotImplementedError

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    async def start(self) -> Self:
        app = web.Application()
        app.add_routes(self.routes())
        self._runner = web.AppRunner(app, shutdown_timeout=1.0, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self._port = int(self._runner.addresses[0][1])
        return self

    async def close(self) -> None:
        self._released.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def record(self, request: web.Request) -> RecordedRequest:
        recorded = RecordedRequest(
            method=request.method,
            path=request.path,
            headers={k.lower(): v for k, v in request.headers.items()},
            body=await request.read(),
            connection=request.protocol,
        )
        self.requests.append(recorded)
        return recorded

    async def stall(self, request: web.Request) -> None:
        """Hold the request open, noticing when the client goes away."""
        while not self._released.is_set():
            transport = request.transport
            if transport is None or transport.is_closing():
                self.disconnects += 1
                return
            try:
                async with asyncio.timeout(DISCONNECT_POLL_S):
                    await self._released.wait()
            except TimeoutError:
                pass

    async def stream_events(
        self,
        request: web.Request,
        *,
        opening: Sequence[bytes] = (),
        content: Sequence[bytes],
        closing: Sequence[bytes] = (),
    ) -> web.StreamResponse:
        """Send SSE events: `opening`, then the `content` chunks (paced by
        `chunk_delay_s`, stalled by `stall_after_chunks`), then `closing`."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        try:
            await response.prepare(request)
            for event in opening:
                await self._write(response, event)
            for index, event in enumerate(content):
                if index == self.stall_after_chunks:
                    await self.stall(request)
                    return response
                if index == self.end_after_chunks:
                    await response.write_eof()
                    return response
                if index > 0 and self.chunk_delay_s > 0:
                    await asyncio.sleep(self.chunk_delay_s)
                await self._write(response, event)
            if self.stall_after_chunks is not None and self.stall_after_chunks >= len(content):
                await self.stall(request)
                return response
            for event in closing:
                await self._write(response, event)
            await response.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            self.disconnects += 1
            raise
        self.completed_streams += 1
        return response

    async def _write(self, response: web.StreamResponse, event: bytes) -> None:
        if self.split_bytes <= 0:
            await response.write(event)
            return
        for start in range(0, len(event), self.split_bytes):
            await response.write(event[start : start + self.split_bytes])
            await asyncio.sleep(self.split_pause_s)

    def error_response(self, default: Any) -> web.Response:
        assert self.error_status is not None
        body = self.error_body if self.error_body is not None else default
        return web.json_response(body, status=self.error_status)


@dataclass
class FakeOpenAI(FakeUpstream):
    """`POST /v1/chat/completions` (streamed or not) and `GET /v1/models`."""

    chunks: Sequence[str] = ("Hello", ",", " world", "!")
    usage: bool = True
    prompt_tokens: int = 9
    finish_reason: str = "stop"
    send_done: bool = True
    models: Sequence[str] = ("gpt-fake", "gpt-fake-mini")
    models_status: int = 200
    # Answer one JSON document even when asked to stream (as some servers do).
    ignore_stream: bool = False

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/v1/chat/completions", self.chat_completions),
            web.get("/v1/models", self.list_models),
        ]

    def _auth_error(self, request: web.Request) -> web.Response | None:
        if self.api_key is None or request.headers.get("Authorization") == f"Bearer {self.api_key}":
            return None
        error = {"message": "Incorrect API key provided", "type": "invalid_request_error"}
        return web.json_response({"error": {**error, "code": "invalid_api_key"}}, status=401)

    async def list_models(self, request: web.Request) -> web.Response:
        await self.record(request)
        if denied := self._auth_error(request):
            return denied
        if self.models_status != 200:
            error = {"message": "models unavailable", "type": "server_error"}
            return web.json_response({"error": error}, status=self.models_status)
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in self.models]
        return web.json_response({"object": "list", "data": data})

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        recorded = await self.record(request)
        if self.stall_before_headers:
            await self.stall(request)
            return web.Response(status=504)
        if denied := self._auth_error(request):
            return denied
        if self.error_status is not None:
            error = {"message": "fake upstream error", "type": "server_error", "code": None}
            return self.error_response({"error": error})
        body = recorded.json
        model = body.get("model", "gpt-fake")
        usage = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": len(self.chunks),
            "total_tokens": self.prompt_tokens + len(self.chunks),
        }
        if not body.get("stream") or self.ignore_stream:
            message = {"role": "assistant", "content": "".join(self.chunks)}
            choice = {"index": 0, "message": message, "finish_reason": self.finish_reason}
            return web.json_response(
                {"id": "chatcmpl-fake", "object": "chat.completion", "created": 0,
                 "model": model, "choices": [choice], "usage": usage}
            )  # fmt: skip
        include_usage = self.usage and bool((body.get("stream_options") or {}).get("include_usage"))
        base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0}
        base["model"] = model

        def chunk(delta: dict[str, str], reason: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "finish_reason": reason}
            extra = {"usage": None} if include_usage else {}
            return sse({**base, "choices": [choice], **extra})

        closing = [chunk({}, self.finish_reason)]
        if include_usage:
            closing.append(sse({**base, "choices": [], "usage": usage}))
        if self.send_done:
            closing.append(b"data: [DONE]\n\n")
        return await self.stream_events(
            request,
            opening=[chunk({"role": "assistant", "content": ""})],
            content=[chunk({"content": text}) for text in self.chunks],
            closing=closing,
        )


@dataclass
class FakeAnthropic(FakeUpstream):
    """`POST /v1/messages`, streamed, with Anthropic's event sequence."""

    chunks: Sequence[str] = ("Hello", " from", " Claude")
    input_tokens: int = 12
    stop_reason: str = "end_turn"
    # An `error` event sent after the content chunks instead of the normal ending.
    stream_error: dict[str, str] | None = None

    @property
    def base_url(self) -> str:
        return self.url

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/v1/messages", self.messages)]

    async def messages(self, request: web.Request) -> web.StreamResponse:
        recorded = await self.record(request)
        if self.stall_before_headers:
            await self.stall(request)
            return web.Response(status=504)
        if self.api_key is not None and request.headers.get("x-api-key") != self.api_key:
            error = {"type": "authentication_error", "message": "invalid x-api-key"}
            return web.json_response({"type": "error", "error": error}, status=401)
        if self.error_status is not None:
            error = {"type": "overloaded_error", "message": "Overloaded"}
            return self.error_response({"type": "error", "error": error})
        model = recorded.json.get("model", "claude-fake")
        message = {
            "id": "msg_fake", "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": self.input_tokens, "output_tokens": 1},
        }  # fmt: skip
        events = [
            sse({"type": "content_block_delta", "index": 0,
                 "delta": {"type": "text_delta", "text": text}}, "content_block_delta")
            for text in self.chunks
        ]  # fmt: skip
        opening = [
            sse({"type": "message_start", "message": message}, "message_start"),
            sse({"type": "content_block_start", "index": 0,
                 "content_block": {"type": "text", "text": ""}}, "content_block_start"),
            sse({"type": "ping"}, "ping"),
        ]  # fmt: skip
        if self.stream_error is not None:
            closing = [sse({"type": "error", "error": self.stream_error}, "error")]
        else:
            closing = [
                sse({"type": "content_block_stop", "index": 0}, "content_block_stop"),
                sse({"type": "message_delta",
                     "delta": {"stop_reason": self.stop_reason, "stop_sequence": None},
                     "usage": {"output_tokens": len(self.chunks)}}, "message_delta"),
                sse({"type": "message_stop"}, "message_stop"),
            ]  # fmt: skip
        return await self.stream_events(request, opening=opening, content=events, closing=closing)
