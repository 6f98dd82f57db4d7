"""The socket floor (`bench.raw`): a plain asyncio protocol that must answer the load
generator's requests with exactly the stream the mock and the bare floor send."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from bench.loadgen import LOOPBACK_HOST
from bench.raw import Frames, RawStream
from bench.upstream import DONE, FakeUpstream

CHUNKS = FakeUpstream(chunks=3, ttft_ms=1, chunk_delay_ms=1)
BODY = b'{"model": "mock", "stream": true, "messages": []}'


def expected_stream() -> bytes:
    return CHUNKS.role + b"".join(CHUNKS.content) + CHUNKS.finish + CHUNKS.usage_event + DONE


CONNECTIONS: list[RawStream] = []


def connection(frames: Frames) -> RawStream:
    CONNECTIONS.append(RawStream(frames))
    return CONNECTIONS[-1]


@pytest.fixture
async def base_url() -> AsyncIterator[str]:
    loop = asyncio.get_running_loop()
    frames = Frames(CHUNKS)
    CONNECTIONS.clear()
    server = await loop.create_server(lambda: connection(frames), LOOPBACK_HOST, 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://{LOOPBACK_HOST}:{port}"
    finally:
        server.close()
        await server.wait_closed()


async def test_it_streams_the_mock_chunks_request_after_request_on_one_connection(
    base_url: str,
) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(3):
            async with session.post(f"{base_url}/v1/chat/completions", data=BODY) as response:
                assert response.status == 200
                assert response.headers["content-type"] == "text/event-stream"
                assert await response.read() == expected_stream()
    assert len(CONNECTIONS) == 1  # kept alive: one connection served all three


async def test_a_request_split_across_writes_is_answered_once_whole(base_url: str) -> None:
    port = int(base_url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection(LOOPBACK_HOST, port)
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(
        BODY
    )
    writer.write(head + BODY[:10])
    await writer.drain()
    await asyncio.sleep(0.01)
    writer.write(BODY[10:])
    answer = await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), timeout=5)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert answer.count(b"data: [DONE]") == 1


async def test_any_other_request_is_a_404(base_url: str) -> None:
    async with aiohttp.ClientSession() as session, session.get(f"{base_url}/") as response:
        assert response.status == 404
        assert await response.read() == b""
