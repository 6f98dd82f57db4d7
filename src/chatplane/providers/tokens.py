"""Approximate token counts, for vendors that report none (the mock) and for budgets.

About four characters per token for English text; good enough for reservations and
demos, never used where the upstream reports real usage.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from chatplane.providers.protocol import ChatMessage

CHARS_PER_TOKEN = 4
# Role markers and separators a chat template adds around each message.
MESSAGE_OVERHEAD_TOKENS = 3


def estimate_tokens(text: str) -> int:
    """ceil(len / 4); 0 for the empty string, at least 1 otherwise."""
    if not text:
        return 0
    return max(1, math.ceil(len(text) / CHARS_PER_TOKEN))


def estimate_prompt_tokens(messages: Iterable[ChatMessage]) -> int:
    return sum(estimate_tokens(m.content) + MESSAGE_OVERHEAD_TOKENS for m in messages)


def truncate_to_tokens(text: str, max_tokens: int) -> str:
    """The longest prefix whose estimate is at most `max_tokens`."""
    return text[: max(0, max_tokens) * CHARS_PER_TOKEN]


# At most this many template tokens around each message, and to prime the reply.
MESSAGE_OVERHEAD_BOUND = 8
REPLY_PRIMING_BOUND = 3


def prompt_tokens_bound(messages: Iterable[ChatMessage]) -> int:
    """An upper bound of the prompt's tokens for any byte-level tokenizer (each token covers
    at least one byte of UTF-8): what a budget reserves, so the actual cost cannot exceed it."""
    return REPLY_PRIMING_BOUND + sum(
        len(m.content.encode()) + MESSAGE_OVERHEAD_BOUND for m in messages
    )
