from __future__ import annotations

import gzip
from dataclasses import dataclass

import aiohttp
import pytest
from aiohttp import web

from chatplane.providers import (
    OpenAIProvider,
    UpstreamHttp,
    build_registry,
    create_upstream_session,
)

from .conftest import make_settings
from .fakes import FakeOpenAI, FakeUpstream

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


async def test_the_shared_session_is_made_on_first_use_and_closed_once() -> None:
    http = UpstreamHttp(make_settings(upstream_read_timeout_s=42.0))
    assert not http.started
    session = http.session
    assert http.started
    assert http.session is session  # one session per process
    assert session.timeout.sock_read == 42.0
    await http.close()
    assert session.closed
    await http.close()  # closing twice is harmless


async def test_a_holder_closed_unused_never_makes_a_session() -> None:
    http = UpstreamHttp(make_settings())
    await http.close()
    assert not http.started
    with pytest.raises(RuntimeError):
        http.session  # noqa: B018 - a session made after shutdown would never be closed


async def test_the_mock_models_need_no_session_an_upstream_does(fake_openai: FakeOpenAI) -> None:
    mocks_only = UpstreamHttp(make_settings())
    registry = await build_registry(make_settings(), mocks_only, environ={})
    assert registry.get("mock-echo") is not None
    assert not mocks_only.started
    await registry.close()

    settings = make_settings(openai_base_url=fake_openai.base_url, openai_api_key="sk-test")
    with_upstream = UpstreamHttp(settings)
    registry = await build_registry(settings, with_upstream, environ={})
    try:
        assert with_upstream.started
        route = await registry.resolve(fake_openai.models[0])
        assert isinstance(route.provider, OpenAIProvider)
    finally:
        await registry.close()
        await with_upstream.close()
