from __future__ import annotations

import asyncio

import aiohttp
import pytest

from chatplane.errors import ProviderError, ProviderTimeout
from chatplane.providers import (
    AnthropicProvider,
    ChatMessage,
    CompletionRequest,
    Finish,
    StreamItem,
    TextDelta,
    Usage,
)

from .conftest import eventually, read_into, stream_items, text_of
from .fakes import FakeAnthropic

REQUEST = CompletionRequest(
    model="claude-fake",
    messages=[
        ChatMessage("system", "be brief"),
        ChatMessage("user", "hi"),
        ChatMessage("assistant", "hello"),
        ChatMessage("system", "answer in French"),
        ChatMessage("user", "how are you?"),
        ChatMessage("user", "and today?"),
    ],
    stop=["\n\nHuman:"],
)


def provider_for(
    upstream: FakeAnthropic, session: aiohttp.ClientSession, key: str = "ant-test"
) -> AnthropicProvider:
    return AnthropicProvider(session=session, base_url=upstream.base_url, api_key=key)


async def collect(
    provider: AnthropicProvider, request: CompletionRequest = REQUEST
) -> list[StreamItem]:
    return await stream_items(provider, request)


async def test_stream_yields_text_then_finish_with_usage(
    fake_anthropic: FakeAnthropic, session: aiohttp.ClientSession
) -> None:
    items = await collect(provider_for(fake_anthropic, session))
    assert [i.text for i in items if isinstance(i, TextDelta)] == ["Hello", " from", " Claude"]
    assert items[-1] == Finish(
        reason="stop",
        usage=Usage(prompt_tokens=12, completion_tokens=3),
        extra={"upstream_stop_reason": "end_turn"},
    )


async def test_stream_sends_the_messages_api_request(
    fake_anthropic: FakeAnthropic, session: aiohttp.ClientSession
) -> None:
    await collect(provider_for(fake_anthropic, session))
    [sent] = fake_anthropic.requests
    assert sent.path == "/v1/messages"
    assert sent.headers["x-api-key"] == "ant-test"
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert sent.json == {
        "model": "claude-fake",
        "max_tokens": 1024,
        "system": "be brief\n\nanswer in French",
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "how are you?\n\nand today?"},
        ],
        "stream": True,
        "stop_sequences": ["\n\nHuman:"],
    }


async def test_max_tokens_and_a_base_url_with_v1_are_honoured(
    fake_anthropic: FakeAnthropic, session: aiohttp.ClientSession
) -> None:
    fake_anthropic.stop_reason = "max_tokens"
    provider = AnthropicProvider(
        session=session, base_url=f"{fake_anthropic.url}/v1/", api_key="ant-test"
    )
    request = CompletionRequest(
        model="claude-fake", messages=[ChatMessage("user", "hi")], max_tokens=7
    )
    items = await collect(provider, request)
    assert fake_anthropic.requests[0].json["max_tokens"] == 7
    assert "system" not in fake_anthropic.requests[0].json
    finish = items[-1]
    assert isinstance(finish, Finish)
    assert (finish.reason, finish.extra) == ("length", {"upstream_stop_reason": "max_tokens"})


async def test_events_split_across_writes_are_put_back_together(
    fake_anthropic: FakeAnthropic, session: aiohttp.ClientSession
) -> None:
    fake_anthropic.chunks = ["Ça", " va", " très", " bien 👍"]
    fake_anthropic.split_bytes = 5
    items = await collect(provider_for(fake_anthropic, session))
    assert text_of(items) == "Ça va très bien 👍"
    assert isinstance(items[-1], Finish)
    assert items[-1].usage == Usage(prompt_tokens=12, completion_tokens=4)


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        ({"type": "overloaded_error", "message": "Overloaded"}, "upstream_error"),
        ({"type": "rate_limit_error", "message": "Too many tokens"}, "rate_limited"),
    ],
)
async def test_an_error_event_mid_stream_is_a_provider_error(
    fake_anthropic: FakeAnthropic,
    session: aiohttp.ClientSession,
    error: dict[str, str],
    kind: str,
) -> None:
    fake_anthropic.stream_error = error
    seen: list[StreamItem] = []
    with pytest.raises(ProviderError) as caught:
        await read_into(seen, provider_for(fake_anthropic, session).stream(REQUEST))
    assert text_of(seen) == "Hello from Claude"
    assert caught.value.kind == kind
    assert error["message"] in caught.value.detail
    assert caught.value.extra["upstream_type"] == error["type"]


async def test_a_wrong_key_is_an_auth_error_with_the_upstream_message(
    fake_anthropic: FakeAnthropic, session: aiohttp.ClientSession
) -> None:
    with pytest.raises(ProviderError) as caught:
        await collect(provider_for(fake_anthropic, session, key="wrong"))
    assert caught.value.kind == "auth"
    assert "HTTP 401" in caught.value.detail
    assert "invalid x-api-key" in caught.value.detail
    assert caught.value.extra["upstream_type"] == "authentication_error"


@pytest.mark.parametrize(("status", "kind"), [(429, "rate_limited"), (529, "upstream_error")])
async def test_error_statuses_become_provider_errors(
    fake_anthropic: FakeAnthropic, session: aiohttp.ClientSession, status: int, kind: str
) -> None:
    fake_anthropic.error_status = status
    with pytest.raises(ProviderError) as caught:
        await collect(provider_for(fake_anthropic, session))
    assert caught.value.kind == kind
    assert f"HTTP {status}: Overloaded" in caught.value.detail


async def test_a_stream_that_ends_before_message_stop_is_an_error(
    fake_anthropic: FakeAnthropic, session: aiohttp.ClientSession
) -> None:
    fake_anthropic.end_after_chunks = 1
    with pytest.raises(ProviderError) as caught:
        await collect(provider_for(fake_anthropic, session))
    assert caught.value.kind == "upstream_error"
    assert "message_stop" in caught.value.detail


async def test_connection_refused_is_a_connect_error(
    refused_url: str, session: aiohttp.ClientSession
) -> None:
    provider = AnthropicProvider(session=session, base_url=refused_url, api_key="k")
    with pytest.raises(ProviderError) as caught:
        await collect(provider)
    assert caught.value.kind == "connect"


async def test_a_silent_upstream_times_out(
    fake_anthropic: FakeAnthropic, impatient_session: aiohttp.ClientSession
) -> None:
    fake_anthropic.stall_after_chunks = 2
    seen: list[StreamItem] = []
    with pytest.raises(ProviderTimeout):
        await read_into(seen, provider_for(fake_anthropic, impatient_session).stream(REQUEST))
    assert text_of(seen) == "Hello from"


async def test_cancelling_the_reader_closes_the_upstream_connection(
    fake_anthropic: FakeAnthropic, session: aiohttp.ClientSession
) -> None:
    fake_anthropic.chunks = [f" word{i}" for i in range(500)]
    fake_anthropic.chunk_delay_s = 0.01
    seen: list[StreamItem] = []

    async def read() -> None:
        async for item in provider_for(fake_anthropic, session).stream(REQUEST):
            seen.append(item)

    reader = asyncio.create_task(read())
    await eventually(lambda: len(seen) >= 2)
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    await eventually(lambda: fake_anthropic.disconnects == 1)
    assert fake_anthropic.completed_streams == 0
