"""The mock model `mock-cite`: answers from the passages of the retrieval system message,
citing the first two by number with their first sentences quoted."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from chatplane.knowledge.citations import resolve_citations
from chatplane.knowledge.index import Passage
from chatplane.knowledge.prompt import build_retrieval_prompt
from chatplane.providers.mock import MOCK_CITE, MOCK_MODELS, NO_SOURCES_REPLY, MockProvider
from chatplane.providers.protocol import ChatMessage, CompletionRequest, Finish, TextDelta
from chatplane.providers.registry import build_registry
from tests.conftest import make_settings


def passage(chunk_id: int, text: str) -> Passage:
    return Passage(
        chunk_id=chunk_id,
        document_id=f"doc{chunk_id}",
        kb_id="kb",
        text=text,
        heading=None,
        page=None,
        score=1.0,
    )


async def _answer(provider: MockProvider, messages: list[ChatMessage]) -> tuple[list[str], Finish]:
    deltas: list[str] = []
    finish: Finish | None = None
    async for item in provider.stream(CompletionRequest(model=MOCK_CITE, messages=messages)):
        if isinstance(item, TextDelta):
            deltas.append(item.text)
        elif isinstance(item, Finish):
            finish = item
    assert finish is not None
    return deltas, finish


async def test_it_cites_the_first_two_passages_with_their_first_sentences() -> None:
    prompt = build_retrieval_prompt(
        [
            passage(1, "Chatplane runs on a laptop. It also scales."),
            passage(2, 'Uploads say "no" above 50 MB! Really.'),
            passage(3, "Never cited. Third."),
        ],
        max_tokens=1000,
    )
    messages = [
        ChatMessage(role="system", content="Be brief."),
        ChatMessage(role="system", content=prompt.message),
        ChatMessage(role="user", content="What runs where?"),
    ]

    deltas, finish = await _answer(MockProvider(), messages)

    text = "".join(deltas)
    assert text == (
        'From the sources: [1] "Chatplane runs on a laptop." [2] "Uploads say "no" above 50 MB!"'
    )
    assert len(deltas) > 5  # streamed in word pieces like the other mocks
    assert finish.reason == "stop"
    assert finish.usage is not None
    assert finish.usage.completion_tokens > 0
    citations, dropped = resolve_citations(text, prompt.passages)
    assert dropped == 0
    assert [(c.n, c.chunk_id, c.quote) for c in citations] == [
        (1, 1, "Chatplane runs on a laptop."),
        (2, 2, 'Uploads say "no" above 50 MB!'),
    ]


async def test_one_passage_gives_one_citation() -> None:
    prompt = build_retrieval_prompt([passage(5, "Only this.")], max_tokens=1000)
    deltas, _ = await _answer(MockProvider(), [ChatMessage(role="system", content=prompt.message)])
    assert "".join(deltas) == 'From the sources: [1] "Only this."'


async def test_without_passages_it_says_it_found_no_sources() -> None:
    nothing = build_retrieval_prompt([], max_tokens=1000)
    for messages in (
        [
            ChatMessage(role="system", content=nothing.message),
            ChatMessage(role="user", content="q"),
        ],
        [ChatMessage(role="user", content="no system message at all")],
    ):
        deltas, _ = await _answer(MockProvider(), messages)
        assert "".join(deltas) == NO_SOURCES_REPLY


async def test_passages_in_a_user_message_are_not_sources() -> None:
    prompt = build_retrieval_prompt([passage(1, "Injected. Text.")], max_tokens=1000)
    deltas, _ = await _answer(MockProvider(), [ChatMessage(role="user", content=prompt.message)])
    assert "".join(deltas) == NO_SOURCES_REPLY


async def test_it_is_paced_like_the_other_mocks() -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    provider = MockProvider(ttft_ms=30, chunk_delay_ms=10, sleep=sleep)
    prompt = build_retrieval_prompt([passage(1, "One two three.")], max_tokens=1000)
    deltas, _ = await _answer(provider, [ChatMessage(role="system", content=prompt.message)])
    assert slept == [0.03] + [0.01] * (len(deltas) - 1)


def test_it_is_one_of_the_mock_models() -> None:
    assert MOCK_CITE == "mock-cite"
    assert MOCK_CITE in MOCK_MODELS


async def test_the_registry_lists_it_with_the_other_mocks(tmp_path: Path) -> None:
    async with aiohttp.ClientSession() as session:
        registry = await build_registry(make_settings(tmp_path), session, environ={})
        try:
            route = await registry.resolve(MOCK_CITE)
            assert route.kind == "mock"
            assert route.upstream_model == MOCK_CITE
            assert MOCK_CITE in [r.name for r in registry.models()]
        finally:
            await registry.close()
