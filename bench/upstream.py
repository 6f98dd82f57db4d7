"""A fake OpenAI-compatible upstream for the passthrough scenario (aiohttp.web, loopback).

`GET /v1/models` lists one model; `POST /v1/chat/completions` streams `chunks` content
chunks, the first after `ttft_ms` and the next ones `chunk_delay_ms` apart, then the
finish chunk, the usage chunk (when asked for with `stream_options.include_usage`) and
`data: [DONE]`, one write per chunk, like a real server. Every chunk is built once at
start, so the upstream costs little CPU per request.

It runs as its own process (`python -m bench.upstream --port N ...`), so it does not share
the load generator's event loop; `start_upstream` launches it and waits until it answers.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import orjson
from aiohttp import web

from bench.loadgen import LOOPBACK_HOST
from bench.procs import ManagedProcess, child_env

UPSTREAM_MODEL = "bench-upstream"
WORDS = ("lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit")
DONE = b"data: [DONE]\n\n"
READY_DEADLINE_S = 20.0


def _event(payload: dict[str, object]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


class FakeUpstream:
    def __init__(self, *, chunks: int, ttft_ms: float, chunk_delay_ms: float) -> None:
        if chunks < 1:
            raise ValueError("chunks must be at least 1")
        self.ttft_s = ttft_ms / 1000
        self.chunk_delay_s = chunk_delay_ms / 1000
        created = int(time.time())
        base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": created}
        base["model"] = UPSTREAM_MODEL

        def choice(delta: dict[str, str], reason: str | None = None) -> dict[str, object]:
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}

        self.words = [(" " if i else "") + WORDS[i % len(WORDS)] for i in range(chunks)]
        self.role = _event({**base, "choices": [choice({"role": "assistant", "content": ""})]})
        self.content = [_event({**base, "choices": [choice({"content": w})]}) for w in self.words]
        self.finish = _event({**base, "choices": [choice({}, "stop")]})
        self.usage = {"prompt_tokens": 12, "completion_tokens": chunks, "total_tokens": 12 + chunks}
        self.usage_event = _event({**base, "choices": [], "usage": self.usage})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        return app

    async def models(self, _request: web.Request) -> web.Response:
        data = [{"id": UPSTREAM_MODEL, "object": "model", "created": 0, "owned_by": "bench"}]
        return web.Response(
            body=orjson.dumps({"object": "list", "data": data}), content_type="application/json"
        )

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        if not body.get("stream"):
            return await self._complete()
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        if self.ttft_s > 0:
            await asyncio.sleep(self.ttft_s)
        await response.write(self.role + self.content[0])
        for chunk in self.content[1:]:
            if self.chunk_delay_s > 0:
                await asyncio.sleep(self.chunk_delay_s)
            await response.write(chunk)
        await response.write(self.finish + (self.usage_event if include_usage else b"") + DONE)
        await response.write_eof()
        return response

    async def _complete(self) -> web.Response:
        await asyncio.sleep(self.ttft_s + self.chunk_delay_s * (len(self.words) - 1))
        message = {"role": "assistant", "content": "".join(self.words)}
        payload = {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": UPSTREAM_MODEL,
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": self.usage,
        }
        return web.Response(body=orjson.dumps(payload), content_type="application/json")


def stream_argv(
    module: str, port: int, *, chunks: int, ttft_ms: float, chunk_delay_ms: float
) -> list[str]:
    """The command line of a stream server module (this one or a floor) with the run's pacing."""
    argv = [sys.executable, "-m", module, "--port", str(port), "--chunks", str(chunks)]
    return [*argv, "--ttft-ms", str(ttft_ms), "--chunk-delay-ms", str(chunk_delay_ms)]


def stream_options(description: str, argv: list[str] | None) -> tuple[int, FakeUpstream]:
    """A stream server module's own command line (what `stream_argv` writes): its port and
    the chunks it sends."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("--ttft-ms", type=float, default=0.0)
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0)
    args = parser.parse_args(argv)
    chunks = FakeUpstream(
        chunks=args.chunks, ttft_ms=args.ttft_ms, chunk_delay_ms=args.chunk_delay_ms
    )
    return args.port, chunks


def upstream_url(port: int) -> str:
    return f"http://{LOOPBACK_HOST}:{port}/v1"


async def start_upstream(
    workdir: Path, *, port: int, chunks: int, ttft_ms: float, chunk_delay_ms: float
) -> ManagedProcess:
    """Start the fake upstream as a child process on `port`, wait until it answers. It
    stands for the model vendor, outside the system under test: when the bench pins CPUs
    it runs beside the load generator."""
    argv = stream_argv(
        "bench.upstream", port, chunks=chunks, ttft_ms=ttft_ms, chunk_delay_ms=chunk_delay_ms
    )
    env = child_env({})
    process = ManagedProcess("upstream", argv, env=env, cwd=workdir, under_test=False)
    await process.start()
    try:
        await process.wait_ready(upstream_url(port) + "/models", deadline_s=READY_DEADLINE_S)
    except BaseException:
        await process.stop()
        raise
    return process


def main(argv: list[str] | None = None) -> None:
    port, upstream = stream_options("A fake OpenAI-compatible streaming upstream.", argv)
    loop = _new_loop()
    web.run_app(
        upstream.app(), host=LOOPBACK_HOST, port=port, access_log=None, print=None, loop=loop
    )


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


if __name__ == "__main__":
    main()
