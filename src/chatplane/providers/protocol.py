"""Model providers: one protocol, a registry by model name, adapters per vendor."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: Role
    content: str


@dataclass(frozen=True, slots=True)
class CompletionRequest:
    model: str  # the upstream model name
    messages: Sequence[ChatMessage]
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: Sequence[str] | None = None


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class Finish:
    """The last item of every stream: why it ended and what it used."""

    reason: str = "stop"
    usage: Usage | None = None
    extra: dict[str, Any] = field(default_factory=dict)


StreamItem = TextDelta | Finish


class Provider(Protocol):
    name: str

    def stream(self, request: CompletionRequest) -> AsyncGenerator[StreamItem, None]:
        """Yield text deltas and end with exactly one `Finish`. Raise `ProviderError`
        (or `ProviderTimeout`) on upstream failure; cancelling the iterating task, or
        closing the generator, stops the upstream request at once."""
        ...

    async def close(self) -> None: ...


@asynccontextmanager
async def open_stream(
    provider: Provider, request: CompletionRequest
) -> AsyncIterator[AsyncIterator[StreamItem]]:
    """`provider.stream(request)`, closed on exit even when the caller stops reading
    early (a `break` on cancel), so the upstream request ends then, not at garbage
    collection:

        async with open_stream(route.provider, request) as items:
            async for item in items:
                ...
    """
    items = provider.stream(request)
    try:
        yield items
    finally:
        await items.aclose()
