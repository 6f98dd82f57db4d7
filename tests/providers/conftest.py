from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from chatplane.providers import create_upstream_session
from chatplane.providers.protocol import CompletionRequest, Provider, StreamItem, TextDelta
from chatplane.settings import Settings

from .fakes import FakeAnthropic, FakeOpenAI


def make_settings(**overrides: Any) -> Settings:
    """Settings from the arguments only: no .env file, no CHATPLANE_* leaking in."""
    values: dict[str, Any] = {
        "upstream_connect_timeout_s": 2.0,
        "upstream_read_timeout_s": 5.0,
        **overrides,
    }
    return Settings(_env_file=None, **values)


async def eventually(predicate: Callable[[], bool], *, timeout_s: float = 5.0) -> None:
    """Poll until `predicate()` holds, failing after the deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        await asyncio.sleep(0.005)


async def stream_items(provider: Provider, request: CompletionRequest) -> list[StreamItem]:
    return [item async for item in provider.stream(request)]


def text_of(items: list[StreamItem]) -> str:
    return "".join(item.text for item in items if isinstance(item, TextDelta))


async def read_into(seen: list[Any], stream: AsyncIterable[Any]) -> None:
    """Append every item to `seen`, so a test can look at them after the stream failed."""
    async for item in stream:
        seen.append(item)


@pytest.fixture(autouse=True)
def _no_chatplane_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("CHATPLANE_")]:
        monkeypatch.delenv(name)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    upstream = create_upstream_session(make_settings())
    yield upstream
    await upstream.close()


@pytest.fixture
async def impatient_session() -> AsyncIterator[aiohttp.ClientSession]:
    """Gives up on an upstream that stays silent for 0.3 s."""
    upstream = create_upstream_session(
        make_settings(upstream_connect_timeout_s=0.3, upstream_read_timeout_s=0.3)
    )
    yield upstream
    await upstream.close()


@pytest.fixture
async def fake_openai() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(api_key="sk-test") as upstream:
        yield upstream


@pytest.fixture
async def fake_anthropic() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic(api_key="ant-test") as upstream:
        yield upstream


@pytest.fixture
def refused_url() -> str:
    """A local URL where nothing listens: connecting is refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"
