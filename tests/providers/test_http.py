from __future__ import annotations

import gzip
from dataclasses import dataclass

import aiohttp
import pytest
from aiohttp import web

from chatplane.providers import create_upstream_session

from .conftest import make_settings
from .fakes import FakeUpstream

BODY = b'{"answer": "plain bytes, please"}'


@dataclass
class GzipUpstream(FakeUpstream):
    """Answers gzip whatever the client asks for, as some proxies do."""

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/blob", self.blob)]

    async def blob(self, request: web.Request) -> web.Response:
        await self.record(request)
        return web.Response(body=gzip.compress(BODY), headers={"Content-Encoding": "gzip"})


async def test_the_session_asks_for_identity_and_never_decompresses() -> None:
    session = create_upstream_session(make_settings())
    try:
        async with GzipUpstream() as upstream, session.get(f"{upstream.url}/blob") as response:
            raw = await response.read()
    finally:
        await session.close()
    assert upstream.requests[0].headers["accept-encoding"] == "identity"
    assert upstream.requests[0].headers["user-agent"].startswith("chatplane/")
    assert raw == gzip.compress(BODY)  # forwarded as sent, not inflated


async def test_the_session_takes_its_timeouts_from_settings() -> None:
    session = create_upstream_session(
        make_settings(upstream_connect_timeout_s=3.5, upstream_read_timeout_s=42.0)
    )
    try:
        timeout = session.timeout
        assert (timeout.total, timeout.sock_connect, timeout.sock_read) == (None, 3.5, 42.0)
        assert isinstance(session.connector, aiohttp.TCPConnector)
        assert session.connector.limit > 100
    finally:
        await session.close()


def test_the_session_must_be_built_inside_the_event_loop() -> None:
    with pytest.raises(RuntimeError):
        create_upstream_session(make_settings())
