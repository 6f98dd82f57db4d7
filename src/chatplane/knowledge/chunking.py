"""Sections into chunks for the index: each chunk is an exact slice of one section's text (so a
quote from it is a quote from the document), at most `max_tokens`, cut at the strongest
boundary available (paragraph, then sentence, line, word, and characters only inside a
"word" longer than a chunk), and overlapping the chunk before it in the same section by about
`overlap_tokens` of whole sentences.

Tokens are counted with `chatplane.providers.tokens.estimate_tokens`, not a model tokenizer:
tokenizers fetch their vocabularies from the internet on first use, which a self-hosted
install cannot count on, and the same estimate sizes the retrieval context
(`kb_context_max_tokens`), so chunk bounds and the prompt budget agree."""

from __future__ import annotations

import re
from dataclasses import dataclass

from chatplane.knowledge.extract import ExtractedDocument
from chatplane.providers.tokens import estimate_tokens, truncate_to_tokens


@dataclass(frozen=True, slots=True)
class ChunkDraft:
    ord: int  # position in the document, from 0
    text: str
    heading: str | None
    page: int | None
    tokens: int


# Strength of the boundary before a unit of text: a chunk prefers to end before a stronger one.
PARAGRAPH, SENTENCE, LINE, WORD, CHARACTER = 4, 3, 2, 1, 0

_SPLITTERS = (
    (re.compile(r"\n[ \t]*\n\s*"), PARAGRAPH),
    # After ., !, ?, ... (perhaps closed by a quote or bracket) and before white space.
    (
        re.compile(
            r"(?:(?<=[.!?\u2026\u3002\uff01\uff1f])"
            r"""|(?<=[.!?\u2026]["'\u201d\u2019\u00bb)\]]))\s+"""
        ),
        SENTENCE,
    ),
    (re.compile(r"[ \t]*\n\s*"), LINE),
    (re.compile(r"\s+"), WORD),
)
_ALWAYS_SPLIT = 2  # paragraphs and sentences are always units; lines and words only if too long
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class _Unit:
    start: int
    end: int
    boundary: int  # the strength of the boundary before this unit


def chunk_document(
    doc: ExtractedDocument, *, max_tokens: int, overlap_tokens: int
) -> list[ChunkDraft]:
    """Chunks in document order, `ord` from 0; a chunk never spans two sections (so never two
    headings or pages) and sections without text give none. Deterministic."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, not {max_tokens}")
    if not 0 <= overlap_tokens < max_tokens:
        raise ValueError(f"overlap_tokens must be in [0, {max_tokens}), not {overlap_tokens}")
    drafts: list[ChunkDraft] = []
    for section in doc.sections:
        for text in _SectionChunker(section.text, max_tokens, overlap_tokens).chunks():
            drafts.append(
                ChunkDraft(len(drafts), text, section.heading, section.page, estimate_tokens(text))
            )
    return drafts


class _SectionChunker:
    def __init__(self, text: str, max_tokens: int, overlap_tokens: int) -> None:
        self.text = text
        self.max_tokens = max_tokens
        self.overlap_tokens = overlap_tokens
        self.units: list[_Unit] = []
        self._split(0, len(text), PARAGRAPH, 0)

    def tokens(self, start: int, end: int) -> int:
        return estimate_tokens(self.text[start:end])

    def fits(self, start: int, end: int) -> bool:
        return self.tokens(start, end) <= self.max_tokens

    def chunks(self) -> list[str]:
        units, chunks = self.units, list[str]()
        if not units:
            return chunks
        start, first = units[0].start, 0  # where this chunk begins; its first unit not yet sent
        while True:
            last = first
            while last + 1 < len(units) and self.fits(start, units[last + 1].end):
                last += 1
            if last + 1 < len(units):
                last = self._best_break(start, first, last)
            chunks.append(self.text[start : units[last].end])
            if last + 1 == len(units):
                return chunks
            start, first = self._overlap_start(start, last), last + 1

    def _split(self, start: int, end: int, boundary: int, level: int) -> None:
        """Units of at most max_tokens: paragraphs cut into sentences, and a sentence that is
        still too long cut at lines, then words, then characters."""
        start, end = _strip(self.text, start, end)
        if start >= end:
            return
        if level >= _ALWAYS_SPLIT and self.fits(start, end):
            self.units.append(_Unit(start, end, boundary))
            return
        if level == len(_SPLITTERS):
            while start < end:
                # No token covers more than 16 characters: the window holds the longest
                # prefix that fits without copying the rest of a huge "word" every time.
                window = self.text[start : min(end, start + 16 * self.max_tokens)]
                size = len(truncate_to_tokens(window, self.max_tokens)) or 1
                self.units.append(_Unit(start, start + size, boundary))
                start, boundary = start + size, CHARACTER
            return
        pattern, strength = _SPLITTERS[level]
        piece_start = start
        for match in pattern.finditer(self.text, start, end):
            self._split(piece_start, match.start(), boundary, level + 1)
            piece_start, boundary = match.end(), strength
        self._split(piece_start, end, boundary, level + 1)

    def _best_break(self, start: int, first: int, last: int) -> int:
        """The unit to end the chunk on: the latest one before the strongest boundary among
        those that keep the chunk at least half full."""
        units, best = self.units, last
        for candidate in range(last - 1, first - 1, -1):
            if self.tokens(start, units[candidate].end) * 2 < self.max_tokens:
                break
            if units[candidate + 1].boundary > units[best + 1].boundary:
                best = candidate
        return best

    def _overlap_start(self, chunk_start: int, last: int) -> int:
        """Where the next chunk begins: the most whole units from the end of this chunk that
        stay within overlap_tokens (and leave room for the next unit), else the fewest words
        that do, else the next unit itself."""
        units, end = self.units, self.units[last].end
        following = units[last + 1]
        best = following.start
        for candidate in range(last, -1, -1):
            begin = units[candidate].start
            if begin < chunk_start or self.tokens(begin, end) > self.overlap_tokens:
                break
            if not self.fits(begin, following.end):
                break
            best = begin
        if best != following.start or self.overlap_tokens == 0:
            return best
        for match in _SPACE.finditer(self.text, units[last].start, end):
            begin = match.end()
            if self.tokens(begin, end) <= self.overlap_tokens and self.fits(begin, following.end):
                return begin
        return best


def _strip(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end
