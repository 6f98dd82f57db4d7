"""The built-in mock provider: a product feature for demos, tests and benchmarks.

- `mock-echo` streams back the last user message split into words, each word with the
  whitespace before it ("hello big world" -> "hello", " big", " world"), so joining the
  deltas gives the message back exactly. An empty (or missing) user message gives no
  text at all: the stream is only the `Finish`.
- `mock` streams a fixed filler reply of `chunks` chunks.
- `mock-cite` answers from the passages of a retrieval system message
  (`chatplane.knowledge.prompt`): for each of the first two it writes `[n]` and quotes the
  passage's first sentence in double quotes; with no passages it says it found no sources.

Both are paced by `ttft_ms` (before the first chunk) and `chunk_delay_ms` (between
chunks); a zero delay never sleeps. With probability `failure_rate` a stream fails with
`ProviderError(kind="mock_failure")` after a random number of chunks (possibly none).
`max_tokens` cuts the reply to `max_tokens * 4` characters and ends it with "length".
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence

from chatplane.errors import ProviderError
from chatplane.knowledge import prompt as retrieval_prompt  # a module: the import is circular
from chatplane.providers.protocol import (
    ChatMessage,
    CompletionRequest,
    Finish,
    StreamItem,
    TextDelta,
    Usage,
)
from chatplane.providers.tokens import estimate_prompt_tokens, estimate_tokens, truncate_to_tokens
from chatplane.settings import Settings

MOCK_ECHO = "mock-echo"
MOCK_FILLER = "mock"
MOCK_CITE = "mock-cite"
MOCK_MODELS: tuple[str, ...] = (MOCK_ECHO, MOCK_FILLER, MOCK_CITE)
MOCK_CITE_PASSAGES = 2
NO_SOURCES_REPLY = "I found no sources for this question in the knowledge bases."

FILLER_TEXT = (
    "The quick brown fox jumps over the lazy dog while the mock model keeps talking so "
    "that clients and benchmarks have a steady stream of plain words to count"
)
FILLER_WORDS = tuple(FILLER_TEXT.split(" "))

# A word with the whitespace before it; whitespace at the very end stays on the last word.
_WORD = re.compile(r"\s*\S+(?:\s+$)?")

Sleep = Callable[[float], Awaitable[None]]


def split_words(text: str) -> list[str]:
    """Chunks whose concatenation is `text` exactly."""
    if not text:
        return []
    words = _WORD.findall(text)
    return words or [text]  # whitespace only


def filler_chunks(count: int) -> list[str]:
    words = [FILLER_WORDS[i % len(FILLER_WORDS)] for i in range(count)]
    return [word if i == 0 else " " + word for i, word in enumerate(words)]


def last_user_message(messages: Sequence[ChatMessage]) -> str:
    for message in reversed(messages):
        if message.role == "user":
            return message.content
    return ""


def cited_reply(messages: Sequence[ChatMessage]) -> str:
    """`mock-cite`'s answer: the first two passages of the first system message that has
    any, each as `[n] "its first sentence"`."""
    for message in messages:
        if message.role != "system":
            continue
        passages = retrieval_prompt.parse_passages(message.content)
        if passages:
            quotes = [
                f'[{n}] "{retrieval_prompt.first_sentence(text)}"'
                for n, text in passages[:MOCK_CITE_PASSAGES]
            ]
            return "From the sources: " + " ".join(quotes)
    return NO_SOURCES_REPLY


class MockProvider:
    name = "mock"

    def __init__(
        self,
        *,
        ttft_ms: float = 0.0,
        chunk_delay_ms: float = 0.0,
        chunks: int = 20,
        failure_rate: float = 0.0,
        rng: random.Random | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if chunks < 1:
            raise ValueError("chunks must be at least 1")
        if not 0.0 <= failure_rate <= 1.0:
            raise ValueError("failure_rate must be within [0, 1]")
        self.ttft_s = ttft_ms / 1000
        self.chunk_delay_s = chunk_delay_ms / 1000
        self.chunks = chunks
        # `mock`'s reply is the same every time: split once, not per request.
        self._filler = filler_chunks(chunks)
        self._filler_text = "".join(self._filler)
        self.failure_rate = failure_rate
        self._rng = rng or random.Random()
        self._sleep = sleep

    @classmethod
    def from_settings(cls, settings: Settings, *, rng: random.Random | None = None) -> MockProvider:
        return cls(
            ttft_ms=settings.mock_ttft_ms,
            chunk_delay_ms=settings.mock_chunk_delay_ms,
            chunks=settings.mock_chunks,
            failure_rate=settings.mock_failure_rate,
            rng=rng,
        )

    def reply_text(self, request: CompletionRequest) -> str:
        if request.model == MOCK_ECHO:
            return last_user_message(request.messages)
        if request.model == MOCK_FILLER:
            return self._filler_text
        if request.model == MOCK_CITE:
            return cited_reply(request.messages)
        raise ProviderError(
            f"the mock provider has no model {request.model!r} (use {', '.join(MOCK_MODELS)})",
            kind="not_found",
        )

    async def stream(self, request: CompletionRequest) -> AsyncGenerator[StreamItem, None]:
        text = self.reply_text(request)
        reason = "stop"
        chunks: list[str] | None = self._filler if request.model == MOCK_FILLER else None
        if request.max_tokens is not None and estimate_tokens(text) > request.max_tokens:
            text = truncate_to_tokens(text, request.max_tokens)
            reason = "length"
            chunks = None
        if chunks is None:
            chunks = split_words(text)
        fail_after = self._failure_point(len(chunks))

        if self.ttft_s > 0:
            await self._sleep(self.ttft_s)
        for index, chunk in enumerate(chunks):
            if index == fail_after:
                raise _mock_failure(index)
            if index > 0 and self.chunk_delay_s > 0:
                await self._sleep(self.chunk_delay_s)
            yield TextDelta(chunk)
        if fail_after == len(chunks):
            raise _mock_failure(len(chunks))
        usage = Usage(
            prompt_tokens=estimate_prompt_tokens(request.messages),
            completion_tokens=estimate_tokens(text),
        )
        yield Finish(reason=reason, usage=usage)

    def _failure_point(self, chunk_count: int) -> int | None:
        """How many chunks a failing stream delivers before it fails; None: no failure."""
        if self.failure_rate <= 0 or self._rng.random() >= self.failure_rate:
            return None
        return self._rng.randrange(chunk_count + 1)

    async def close(self) -> None:
        return None


def _mock_failure(delivered: int) -> ProviderError:
    return ProviderError(
        f"mock failure injected after {delivered} chunks (CHATPLANE_MOCK_FAILURE_RATE)",
        kind="mock_failure",
    )
