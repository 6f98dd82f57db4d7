from __future__ import annotations

import random

import pytest

from chatplane.errors import ProviderError
from chatplane.providers import (
    ChatMessage,
    CompletionRequest,
    Finish,
    MockProvider,
    StreamItem,
    TextDelta,
    Usage,
    estimate_prompt_tokens,
    estimate_tokens,
)

from .conftest import make_settings, read_into


def echo_request(text: str, *, max_tokens: int | None = None) -> CompletionRequest:
    return CompletionRequest(
        model="mock-echo", messages=[ChatMessage("user", text)], max_tokens=max_tokens
    )


async def collect(provider: MockProvider, request: CompletionRequest) -> list[StreamItem]:
    return [item async for item in provider.stream(request)]


def texts(items: list[StreamItem]) -> list[str]:
    return [item.text for item in items if isinstance(item, TextDelta)]


async def test_echo_streams_words_with_their_spaces() -> None:
    items = await collect(MockProvider(), echo_request("hello big world"))
    assert texts(items) == ["hello", " big", " world"]
    assert items[-1] == Finish(
        reason="stop",
        usage=Usage(
            prompt_tokens=estimate_prompt_tokens([ChatMessage("user", "hello big world")]),
            completion_tokens=estimate_tokens("hello big world"),
        ),
    )


@pytest.mark.parametrize(
    "text",
    [
        "  leading and trailing  ",
        "lines\nand\ttabs\n\n",
        "unicode: héllo wörld 🌍 ünïcödé",
        "   ",
        "x",
    ],
)
async def test_echo_gives_the_text_back_exactly(text: str) -> None:
    items = await collect(MockProvider(), echo_request(text))
    assert "".join(texts(items)) == text
    assert isinstance(items[-1], Finish)


async def test_echo_of_an_empty_message_is_only_the_finish() -> None:
    items = await collect(MockProvider(), echo_request(""))
    assert items == [Finish(reason="stop", usage=Usage(prompt_tokens=3, completion_tokens=0))]


async def test_echo_answers_the_last_user_message() -> None:
    request = CompletionRequest(
        model="mock-echo",
        messages=[
            ChatMessage("system", "system words"),
            ChatMessage("user", "first question"),
            ChatMessage("assistant", "an answer"),
            ChatMessage("user", "second question"),
        ],
    )
    assert "".join(texts(await collect(MockProvider(), request))) == "second question"


@pytest.mark.parametrize("chunks", [1, 7, 45])
async def test_filler_streams_the_configured_number_of_chunks(chunks: int) -> None:
    provider = MockProvider.from_settings(make_settings(mock_chunks=chunks))
    request = CompletionRequest(model="mock", messages=[ChatMessage("user", "hi")])
    first, second = await collect(provider, request), await collect(provider, request)
    assert len(texts(first)) == chunks
    assert first == second  # a fixed reply
    finish = first[-1]
    assert isinstance(finish, Finish)
    assert finish.usage is not None
    assert finish.usage.completion_tokens == estimate_tokens("".join(texts(first)))


async def test_max_tokens_cuts_the_reply_and_says_length() -> None:
    text = "the quick brown fox jumps over the lazy dog"
    items = await collect(MockProvider(), echo_request(text, max_tokens=3))
    assert "".join(texts(items)) == text[:12]
    finish = items[-1]
    assert isinstance(finish, Finish)
    assert finish.reason == "length"
    assert finish.usage is not None
    assert finish.usage.completion_tokens == 3


async def test_max_tokens_above_the_reply_changes_nothing() -> None:
    items = await collect(MockProvider(), echo_request("short", max_tokens=100))
    assert texts(items) == ["short"]
    assert items[-1] == Finish(reason="stop", usage=Usage(prompt_tokens=5, completion_tokens=2))


async def test_max_tokens_limits_the_filler_too() -> None:
    provider = MockProvider(chunks=50)
    request = CompletionRequest(model="mock", messages=[], max_tokens=5)
    items = await collect(provider, request)
    assert len("".join(texts(items))) == 20
    assert isinstance(items[-1], Finish)
    assert items[-1].reason == "length"


async def test_an_unknown_mock_model_is_a_not_found_provider_error() -> None:
    request = CompletionRequest(model="mock-nope", messages=[ChatMessage("user", "hi")])
    with pytest.raises(ProviderError) as caught:
        await collect(MockProvider(), request)
    assert caught.value.kind == "not_found"
    assert "mock-nope" in caught.value.detail


async def outcomes(provider: MockProvider, runs: int) -> list[str | int]:
    """Per run: "ok", or how many deltas came before the failure."""
    results: list[str | int] = []
    for _ in range(runs):
        seen: list[StreamItem] = []
        failure: ProviderError | None = None
        try:
            await read_into(seen, provider.stream(echo_request("one two three four")))
        except ProviderError as exc:
            failure = exc
        if failure is None:
            assert isinstance(seen[-1], Finish)
            results.append("ok")
        else:
            assert failure.kind == "mock_failure"
            assert not any(isinstance(i, Finish) for i in seen)
            results.append(len(seen))
    return results


async def test_failure_rate_is_reproducible_with_a_seeded_random() -> None:
    first = await outcomes(MockProvider(failure_rate=0.5, rng=random.Random(7)), 200)
    second = await outcomes(MockProvider(failure_rate=0.5, rng=random.Random(7)), 200)
    assert first == second
    failures = [r for r in first if r != "ok"]
    assert 60 <= len(failures) <= 140
    # Failures land anywhere in the stream: before the first chunk and after the last.
    assert {0, 4} <= set(failures)


@pytest.mark.parametrize(("rate", "expect_ok"), [(0.0, True), (1.0, False)])
async def test_failure_rate_extremes(rate: float, expect_ok: bool) -> None:
    results = await outcomes(MockProvider(failure_rate=rate, rng=random.Random(1)), 50)
    assert all((r == "ok") is expect_ok for r in results)


class RecordingSleep:
    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


async def test_pacing_waits_ttft_then_between_chunks() -> None:
    sleep = RecordingSleep()
    provider = MockProvider(ttft_ms=50, chunk_delay_ms=10, chunks=4, sleep=sleep)
    items = await collect(provider, CompletionRequest(model="mock", messages=[]))
    assert len(texts(items)) == 4
    assert sleep.calls == [0.05, 0.01, 0.01, 0.01]


async def test_no_pacing_configured_never_sleeps() -> None:
    sleep = RecordingSleep()
    provider = MockProvider(chunks=30, sleep=sleep)
    await collect(provider, CompletionRequest(model="mock", messages=[]))
    await collect(provider, echo_request("a few words here"))
    assert sleep.calls == []


def test_from_settings_takes_the_mock_settings() -> None:
    provider = MockProvider.from_settings(
        make_settings(
            mock_ttft_ms=120, mock_chunk_delay_ms=15, mock_chunks=3, mock_failure_rate=0.25
        )
    )
    assert (provider.ttft_s, provider.chunk_delay_s) == (0.12, 0.015)
    assert (provider.chunks, provider.failure_rate) == (3, 0.25)
