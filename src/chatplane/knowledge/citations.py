"""Citations: which of the passages given to the model an answer cites, with the words it
quotes, checked against those passages (a marker that names no given passage is dropped)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from chatplane.knowledge.prompt import GivenPassage, first_sentence
from chatplane.observability.metrics import citations_dropped

# `[3]` or `[1, 2]`, not an index like `items[0]`.
_MARKER = re.compile(r"(?<!\w)\[(\d{1,6}(?:\s*,\s*\d{1,6})*)\]")
# A quote opening right after a marker: `[1] "...`, `[1]: “...`, `[2], "...`.
_QUOTE_OPEN = re.compile(r"[ \t]*[:,\-\u2013\u2014]?[ \t]*([\"\u201c])")
_QUOTE_CLOSE = {'"': '"\u201d', "\u201c": '"\u201d'}
QUOTE_MAX_CHARS = 2000


@dataclass(frozen=True, slots=True)
class Citation:
    n: int
    document_id: str
    chunk_id: int
    page: int | None
    quote: str
    filename: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "document_id": self.document_id,
            "chunk_id": self.chunk_id,
            "page": self.page,
            "quote": self.quote,
            "filename": self.filename,
        }


def resolve_citations(answer: str, given: Sequence[GivenPassage]) -> tuple[list[Citation], int]:
    """The citations of `answer` (each passage once, in order of first mention) and how many
    distinct cited numbers named no given passage (dropped; counted in
    `chatplane_citations_dropped_total`).

    A citation's quote is the quoted text after one of its markers when that text is found
    verbatim in the passage (whitespace may differ; the passage's own words are kept),
    otherwise the passage's first sentence."""
    by_n = {passage.n: passage for passage in given}
    order: list[int] = []
    quotes: dict[int, str] = {}
    dropped: set[int] = set()
    for marker in _MARKER.finditer(answer):
        numbers = [int(part) for part in marker.group(1).split(",")]
        for n in numbers:
            passage = by_n.get(n)
            if passage is None:
                dropped.add(n)
                continue
            if n not in order:
                order.append(n)
            if n not in quotes and len(numbers) == 1:
                quote = _quote_after(answer, marker.end(), passage.text)
                if quote:
                    quotes[n] = quote
    citations = [
        Citation(
            n=n,
            document_id=by_n[n].document_id,
            chunk_id=by_n[n].chunk_id,
            page=by_n[n].page,
            quote=quotes.get(n) or first_sentence(by_n[n].text),
            filename=by_n[n].filename,
        )
        for n in order
    ]
    if dropped:
        citations_dropped(len(dropped))
    return citations, len(dropped)


def _quote_after(answer: str, at: int, passage_text: str) -> str | None:
    """The passage's own text for the longest quote opening right after a marker that the
    passage contains (several closing quotes are tried: the quote may hold quotes)."""
    opening = _QUOTE_OPEN.match(answer, at)
    if opening is None:
        return None
    start = opening.end()
    closers = _QUOTE_CLOSE[opening.group(1)]
    limit = min(len(answer), start + QUOTE_MAX_CHARS)
    ends = [i for i in range(start + 1, limit) if answer[i] in closers]
    for end in reversed(ends):
        found = find_verbatim(passage_text, answer[start:end])
        if found:
            return found
    return None


def find_verbatim(text: str, quote: str) -> str | None:
    """The span of `text` that reads as `quote` when runs of whitespace count as one space
    (a model quotes a wrapped line with a space); None when there is none."""
    words = quote.split()
    if not words:
        return None
    pattern = r"\s+".join(re.escape(word) for word in words)
    match = re.search(pattern, text)
    return match.group() if match else None
