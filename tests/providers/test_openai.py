from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from chatplane.errors import ProviderError, ProviderTimeout
from chatplane.providers import (
    ChatMessage,
    CompletionRequest,
    Finish,
    OpenAIProvider,
    StreamItem,
    TextDelta,
    Usage,
    open_stream,
)

from .conftest import eventually, read_into, stream_items, text_of
from .fakes import FakeOpenAI

REQUEST = CompletionRequest(
    model="gpt-fake",
    messages=[ChatMessage("system", "be brief"), ChatMessage("user", "hi")],
    max_tokens=64,
    temperature=0.2,
)


def provider_for(
    upstream: FakeOpenAI, session: aiohttp.ClientSession, key: str | None = "sk-test"
) -> OpenAIProvider:
    return OpenAIProvider(session=session, base_url=upstream.base_url, api_key=key)


async def collect(
    provider: OpenAIProvider, request: CompletionRequest = REQUEST
) -> list[StreamItem]:
    return await stream_items(provider, request)


async def test_stream_yields_deltas_then_finish_with_usage(
    fake_openai: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    items = await collect(provider_for(fake_openai, session))
    assert [i.text for i in items if isinstance(i, TextDelta)] == ["Hello", ",", " world", "!"]
    assert items[-1] == Finish(reason="stop", usage=Usage(prompt_tokens=9, completion_tokens=4))
    assert fake_openai.completed_streams == 1


async def test_stream_sends_the_openai_request(
    fake_openai: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    await collect(provider_for(fake_openai, session))
    [sent] = fake_openai.requests
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == "Bearer sk-test"
    assert sent.headers["accept-encoding"] == "identity"
    assert sent.json == {
        "model": "gpt-fake",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi"},
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 64,
        "temperature": 0.2,
    }


async def test_events_split_across_writes_are_put_back_together(
    fake_openai: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    fake_openai.chunks = ["héllo", " wörld", " 🌍", " done"]
    fake_openai.split_bytes = 7  # cuts "data:", the JSON and multi-byte characters
    items = await collect(provider_for(fake_openai, session))
    assert text_of(items) == "héllo wörld 🌍 done"
    assert isinstance(items[-1], Finish)
    assert items[-1].usage == Usage(prompt_tokens=9, completion_tokens=4)


async def test_without_a_usage_chunk_the_finish_has_no_usage(
    fake_openai: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    fake_openai.usage = False
    fake_openai.finish_reason = "length"
    items = await collect(provider_for(fake_openai, session))
    assert items[-1] == Finish(reason="length", usage=None)


async def test_a_stream_without_done_still_finishes_on_its_finish_reason(
    fake_openai: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    fake_openai.send_done = False
    items = await collect(provider_for(fake_openai, session))
    assert text_of(items) == "Hello, world!"
    assert items[-1] == Finish(reason="stop", usage=Usage(prompt_tokens=9, completion_tokens=4))


async def test_a_stream_cut_off_mid_answer_is_an_error(
    fake_openai: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    fake_openai.end_after_chunks = 2
    seen: list[StreamItem] = []
    with pytest.raises(ProviderError) as caught:
        await read_into(seen, provider_for(fake_openai, session).stream(REQUEST))
    assert caught.value.kind == "upstream_error"
    assert text_of(seen) == "Hello,"


async def test_a_server_that_ignores_stream_is_read_as_one_completion(
    fake_openai: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    fake_openai.ignore_stream = True
    items = await collect(provider_for(fake_openai, session))
    assert items == [
        TextDelta("Hello, world!"),
        Finish(reason="stop", usage=Usage(prompt_tokens=9, completion_tokens=4)),
    ]


@pytest.mark.parametrize(
    ("status", "body", "kind", "message"),
    [
        (
            429,
            {"error": {"message": "Rate limit reached for gpt-fake", "type": "requests"}},
            "rate_limited",
            "Rate limit reached for gpt-fake",
        ),
        (
            500,
            {"error": {"message": "The server had an error", "type": "server_error"}},
            "upstream_error",
            "The server had an error",
        ),
        (404, {"error": "model 'gpt-fake' not found"}, "not_found", "model 'gpt-fake' not found"),
        (403, "<html>forbidden</html>", "auth", "<html>forbidden</html>"),
    ],
)
async def test_error_statuses_become_provider_errors(
    fake_openai: FakeOpenAI,
    session: aiohttp.ClientSession,
    status: int,
    body: object,
    kind: str,
    message: str,
) -> None:
    fake_openai.error_status, fake_openai.error_body = status, body
    with pytest.raises(ProviderError) as caught:
        await collect(provider_for(fake_openai, session))
    assert caught.value.kind == kind
    assert f"HTTP {status}" in caught.value.detail
    assert message in caught.value.detail
    assert caught.value.extra["upstream_status"] == status


async def test_a_wrong_key_is_an_auth_error_with_the_upstream_message(
    fake_openai: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    with pytest.raises(ProviderError) as caught:
        await collect(provider_for(fake_openai, session, key="sk-wrong"))
    assert caught.value.kind == "auth"
    assert "HTTP 401" in caught.value.detail
    assert "Incorrect API key provided" in caught.value.detail


async def test_connection_refused_is_a_connect_error(
    refused_url: str, session: aiohttp.ClientSession
) -> None:
    provider = OpenAIProvider(session=session, base_url=f"{refused_url}/v1")
    with pytest.raises(ProviderError) as caught:
        await collect(provider)
    assert caught.value.kind == "connect"
    with pytest.raises(ProviderError) as caught:
        await provider.open_chat_completions(b"{}")
    assert caught.value.kind == "connect"


@pytest.mark.parametrize("stall", ["headers", "body"])
async def test_a_silent_upstream_times_out(
    fake_openai: FakeOpenAI, impatient_session: aiohttp.ClientSession, stall: str
) -> None:
    if stall == "headers":
        fake_openai.stall_before_headers = True
    else:
        fake_openai.stall_after_chunks = 1
    seen: list[StreamItem] = []
    with pytest.raises(ProviderTimeout) as caught:
        await read_into(seen, provider_for(fake_openai, impatient_session).stream(REQUEST))
    assert caught.value.kind == "timeout"
    assert text_of(seen) == ("" if stall == "headers" else "Hello")


async def test_cancelling_the_reader_closes_the_upstream_connection(
    fake_openai: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    fake_openai.chunks = [f" word{i}" for i in range(500)]
    fake_openai.chunk_delay_s = 0.01
    seen: list[StreamItem] = []

    async def read() -> None:
        async for item in provider_for(fake_openai, session).stream(REQUEST):
            seen.append(item)

    reader = asyncio.create_task(read())
    await eventually(lambda: len(seen) >= 2)
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    await eventually(lambda: fake_openai.disconnects == 1)
    assert fake_openai.completed_streams == 0


async def test_leaving_open_stream_early_closes_the_upstream_connection(
    fake_openai: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    fake_openai.chunks = [f" word{i}" for i in range(500)]
    fake_openai.chunk_delay_s = 0.01
    async with open_stream(provider_for(fake_openai, session), REQUEST) as items:
        async for item in items:
            assert isinstance(item, TextDelta)
            break
    await eventually(lambda: fake_openai.disconnects == 1)
    assert fake_openai.completed_streams == 0


async def test_passthrough_posts_the_body_as_is_and_returns_the_stream(
    fake_openai: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    body = json.dumps(
        {"model": "gpt-fake", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    ).encode()
    response = await provider_for(fake_openai, session).open_chat_completions(body)
    try:
        assert response.status == 200
        assert response.content_type == "text/event-stream"
        received = b"".join([chunk async for chunk in response.content.iter_any()])
    finally:
        response.release()
    assert fake_openai.requests[0].body == body
    assert received.count(b"data: ") == 7  # role, 4 chunks, finish, [DONE]: no usage asked
    assert received.endswith(b"data: [DONE]\n\n")


async def test_passthrough_returns_error_responses_for_the_caller_to_forward(
    fake_openai: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    fake_openai.error_status = 429
    fake_openai.error_body = {"error": {"message": "slow down", "type": "requests"}}
    response = await provider_for(fake_openai, session).open_chat_completions(b"{}")
    try:
        assert response.status == 429
        assert json.loads(await response.read()) == fake_openai.error_body
    finally:
        response.release()


async def test_passthrough_times_out_on_a_silent_upstream(
    fake_openai: FakeOpenAI, impatient_session: aiohttp.ClientSession
) -> None:
    fake_openai.stall_before_headers = True
    with pytest.raises(ProviderTimeout):
        await provider_for(fake_openai, impatient_session).open_chat_completions(b"{}")


async def test_list_models(fake_openai: FakeOpenAI, session: aiohttp.ClientSession) -> None:
    assert await provider_for(fake_openai, session).list_models() == ["gpt-fake", "gpt-fake-mini"]
    assert fake_openai.requests[0].headers["authorization"] == "Bearer sk-test"


async def test_list_models_failure_is_a_provider_error(
    fake_openai: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    fake_openai.models_status = 503
    with pytest.raises(ProviderError) as caught:
        await provider_for(fake_openai, session).list_models()
    assert caught.value.kind == "upstream_error"
    assert "models unavailable" in caught.value.detail


async def test_the_connection_goes_back_to_the_pool_after_a_full_stream(
    fake_openai: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    fake_openai.split_bytes = 16  # the body's end comes a little after [DONE]
    provider = provider_for(fake_openai, session)
    await collect(provider)
    await collect(provider)
    first, second = fake_openai.requests
    assert first.connection is not None
    assert second.connection is first.connection
