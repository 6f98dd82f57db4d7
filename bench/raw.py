"""The socket floor for `v1-mock`: the same stream from a plain asyncio protocol on uvloop,
with no HTTP server library at all (HTTP/1.1 keep-alive read by hand, the chunked frames
of every chunk built once), paced by the event loop's timers alone.

What the load generator measures against this server is what the client, the kernel's
loopback and the timers cost on this machine. chatplane's first-token p99 over this
floor's is what the embedded server (uvicorn and the platform) adds to the mock's first
token; over the bare ASGI floor (`bench.bare`) it is what the platform adds to uvicorn.

It runs as its own process: `python -m bench.raw --port N ...`.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import cast

from bench.bare import start_floor
from bench.loadgen import LOOPBACK_HOST
from bench.procs import ManagedProcess
from bench.upstream import DONE, FakeUpstream, stream_options

HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"
END = b"0\r\n\r\n"
MAX_HEAD_BYTES = 65_536


def frame(data: bytes) -> bytes:
    """One chunk of a `transfer-encoding: chunked` body."""
    return b"%x\r\n%s\r\n" % (len(data), data)


class Frames:
    """The whole response as the frames written at each step, built once."""

    def __init__(self, chunks: FakeUpstream) -> None:
        tail = chunks.finish + chunks.usage_event + DONE
        self.first = HEAD + frame(chunks.role + chunks.content[0])
        self.rest = [frame(chunk) for chunk in chunks.content[1:]]
        self.last = frame(tail) + END
        self.ttft_s = chunks.ttft_s
        self.chunk_delay_s = chunks.chunk_delay_s


class RawStream(asyncio.Protocol):
    """One connection: requests one after another (keep-alive), each answered by a paced
    stream of timer callbacks, with no task per request."""

    def __init__(self, frames: Frames) -> None:
        self.frames = frames
        self.buffer = bytearray()
        self.busy = False
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._next_request()

    def _next_request(self) -> None:
        if self.busy or self.transport is None:
            return
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > MAX_HEAD_BYTES:
                self.transport.close()
            return
        head = bytes(self.buffer[:end]).lower()
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip() == b"content-length":
                length = int(value)
        if len(self.buffer) < end + 4 + length:
            return  # the body is still on its way
        del self.buffer[: end + 4 + length]
        if not head.startswith(b"post /v1/chat/completions "):
            self.transport.write(NOT_FOUND)
            self._next_request()
            return
        self.busy = True
        self.loop.call_later(self.frames.ttft_s, self._write, 0)

    def _write(self, step: int) -> None:
        transport = self.transport
        if transport is None:
            return
        frames = self.frames
        if step == 0:
            transport.write(frames.first)
        elif step <= len(frames.rest):
            transport.write(frames.rest[step - 1])
        if step < len(frames.rest):
            self.loop.call_later(frames.chunk_delay_s, self._write, step + 1)
            return
        transport.write(frames.last)
        self.busy = False
        self._next_request()


async def start_raw(
    workdir: Path, *, chunks: int, ttft_ms: float, chunk_delay_ms: float
) -> tuple[ManagedProcess, str]:
    """Start the socket floor as a child process; returns it and its `/v1` base URL."""
    return await start_floor(
        "bench.raw", workdir, chunks=chunks, ttft_ms=ttft_ms, chunk_delay_ms=chunk_delay_ms
    )


async def serve(port: int, frames: Frames) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: RawStream(frames), LOOPBACK_HOST, port)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    import uvloop

    port, chunks = stream_options("A plain asyncio server streaming mock chunks.", argv)
    uvloop.run(serve(port, Frames(chunks)))


if __name__ == "__main__":
    main()
