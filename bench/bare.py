"""The floor for `v1-mock`: a bare ASGI app on the same uvicorn (uvloop, httptools, no
access log) that streams the same OpenAI chunks with the same pacing, and nothing else
(no framework, no auth, no usage accounting).

chatplane's `v1-mock` numbers minus this app's are what the platform itself costs on
this machine; the bare app's own CPU per request is the least any uvicorn server can
spend here on a streamed 20-chunk request.

It runs as its own process: `python -m bench.bare --port N ...`.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from starlette.types import Receive, Scope, Send

from bench.loadgen import LOOPBACK_HOST
from bench.procs import ManagedProcess, child_env, free_port
from bench.upstream import FakeUpstream, stream_argv, stream_options

READY_DEADLINE_S = 20.0
SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


class BareStream:
    """`POST /v1/chat/completions` only; the body is read and ignored."""

    def __init__(self, chunks: FakeUpstream) -> None:
        self.chunks = chunks

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body", False):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        chunks = self.chunks
        if chunks.ttft_s > 0:
            await asyncio.sleep(chunks.ttft_s)
        await _body(send, chunks.role + chunks.content[0])
        for chunk in chunks.content[1:]:
            if chunks.chunk_delay_s > 0:
                await asyncio.sleep(chunks.chunk_delay_s)
            await _body(send, chunk)
        tail = chunks.finish + chunks.usage_event + b"data: [DONE]\n\n"
        await send({"type": "http.response.body", "body": tail, "more_body": False})


async def _body(send: Send, body: bytes) -> None:
    await send({"type": "http.response.body", "body": body, "more_body": True})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def start_bare(
    workdir: Path, *, chunks: int, ttft_ms: float, chunk_delay_ms: float
) -> tuple[ManagedProcess, str]:
    """Start the bare app as a child process; returns it and its `/v1` base URL."""
    return await start_floor(
        "bench.bare", workdir, chunks=chunks, ttft_ms=ttft_ms, chunk_delay_ms=chunk_delay_ms
    )


async def start_floor(
    module: str, workdir: Path, *, chunks: int, ttft_ms: float, chunk_delay_ms: float
) -> tuple[ManagedProcess, str]:
    """Start a floor server module (`bench.bare`, `bench.raw`) as a child process named
    after it; returns it and its `/v1` base URL once it answers."""
    port = free_port()
    argv = stream_argv(module, port, chunks=chunks, ttft_ms=ttft_ms, chunk_delay_ms=chunk_delay_ms)
    process = ManagedProcess(module.rsplit(".", 1)[-1], argv, env=child_env({}), cwd=workdir)
    await process.start()
    base_url = f"http://{LOOPBACK_HOST}:{port}"
    try:
        # Any answer means it is up; GET is not a route here, so expect a 404.
        await process.wait_ready(base_url + "/", deadline_s=READY_DEADLINE_S, status=404)
    except BaseException:
        await process.stop()
        raise
    return process, base_url + "/v1"


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    port, chunks = stream_options("A bare ASGI app streaming mock chunks.", argv)
    uvicorn.run(
        _Routes(BareStream(chunks)),
        host=LOOPBACK_HOST,
        port=port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )


class _Routes:
    """The stream for `POST /v1/chat/completions`, 404 for anything else."""

    def __init__(self, stream: BareStream) -> None:
        self.stream = stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (
            scope["method"] == "POST" and scope["path"] == "/v1/chat/completions"
        ):
            await self.stream(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})


if __name__ == "__main__":
    main()
