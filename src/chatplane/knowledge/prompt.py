"""The retrieval system message: numbered passages a model answers from, and the parser that
reads them back (the mock model `mock-cite` answers from what it parses). The format and
its parser live side by side so they cannot drift.

The message is a short instruction, then one block per passage:

    <sources>
    <source id="1" file="guide.pdf" page="3" section="Install &gt; On Linux">
    the passage text, exactly as given
    </source>
    ...
    </sources>

Attribute values are HTML-escaped and kept on one line; a passage text that contains the
closing tag `</source>` has it written as `</ source>` so every block ends unambiguously
(the passage the model is then said to have seen carries the same text).
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from chatplane.providers.tokens import estimate_tokens, truncate_to_tokens

INSTRUCTIONS = (
    "Answer from the numbered sources below. After each statement that uses a source, "
    'write its number in square brackets and quote the supporting words exactly, like [1] "the '
    'exact words". Use only numbers listed below. If the sources do not answer the question, '
    "say so."
)
NO_SOURCES = (
    "The knowledge bases were searched for this question and no passage matched. Say that no "
    "source was found before answering from general knowledge."
)
OPEN_BLOCK = "<sources>"
CLOSE_BLOCK = "</sources>"
CLOSE_TAG = "</source>"
ESCAPED_CLOSE_TAG = "</ source>"

FIRST_SENTENCE_MAX_CHARS = 300

_OPEN_TAG = re.compile(r'^<source id="(\d+)"[^>\n]*>\n', re.MULTILINE)
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)|\n\s*\n")


class PassageLike(Protocol):
    """What the prompt needs of a retrieved passage (`chatplane.knowledge.index.Passage`)."""

    @property
    def chunk_id(self) -> int: ...
    @property
    def document_id(self) -> str: ...
    @property
    def text(self) -> str: ...
    @property
    def heading(self) -> str | None: ...
    @property
    def page(self) -> int | None: ...


@dataclass(frozen=True, slots=True)
class GivenPassage:
    """A passage as the model saw it, under its number (its text possibly shortened to the
    budget): what an answer's `[n]` may cite."""

    n: int
    chunk_id: int
    document_id: str
    text: str
    heading: str | None
    page: int | None
    filename: str | None


@dataclass(frozen=True, slots=True)
class RetrievalPrompt:
    message: str  # the system message's content
    passages: list[GivenPassage]


def build_retrieval_prompt(
    passages: Sequence[PassageLike],
    *,
    max_tokens: int,
    filenames: Mapping[str, str] | None = None,
) -> RetrievalPrompt:
    """The system message for `passages` (best first), numbered from 1. Whole passages are
    kept in order while their blocks fit `max_tokens` (the instruction line is not counted);
    when not even the first fits, it is shortened to fit."""
    filenames = filenames or {}
    if not passages:
        return RetrievalPrompt(NO_SOURCES, [])
    blocks: list[str] = []
    given: list[GivenPassage] = []
    used = estimate_tokens(f"{OPEN_BLOCK}\n{CLOSE_BLOCK}")
    for passage in passages:
        item = GivenPassage(
            n=len(given) + 1,
            chunk_id=passage.chunk_id,
            document_id=passage.document_id,
            text=passage.text.replace(CLOSE_TAG, ESCAPED_CLOSE_TAG),
            heading=passage.heading,
            page=passage.page,
            filename=filenames.get(passage.document_id),
        )
        block = _block(item)
        cost = estimate_tokens(block + "\n")
        if used + cost > max_tokens:
            if given:
                break
            frame = estimate_tokens(_block(item, text="") + "\n")
            item = _shortened(item, max_tokens - used - frame)
            block = _block(item)
            cost = estimate_tokens(block + "\n")
        blocks.append(block)
        given.append(item)
        used += cost
    message = "\n".join([INSTRUCTIONS, "", OPEN_BLOCK, *blocks, CLOSE_BLOCK])
    return RetrievalPrompt(message, given)


def parse_passages(system_text: str) -> list[tuple[int, str]]:
    """The numbered passages of a retrieval system message, `(n, text)` in order; [] when
    the message has none (or is not one)."""
    start = system_text.find(f"{OPEN_BLOCK}\n")
    if start == -1:
        return []
    found: list[tuple[int, str]] = []
    at = start + len(OPEN_BLOCK) + 1
    while (tag := _OPEN_TAG.match(system_text, at)) is not None:
        end = system_text.find(f"\n{CLOSE_TAG}\n", tag.end() - 1)
        if end == -1:
            break
        text = system_text[tag.end() : end] if end >= tag.end() else ""
        found.append((int(tag.group(1)), text))
        at = end + len(CLOSE_TAG) + 2
    return found


def first_sentence(text: str) -> str:
    """The passage's first sentence, verbatim (a substring of `text`): up to the first `.`,
    `!` or `?` before whitespace, or a blank line, at most about 300 characters (cut at a
    word)."""
    stripped = text.lstrip()
    match = _SENTENCE_END.search(stripped)
    end = (
        len(stripped) if match is None else match.end() if match.group() in ".!?" else match.start()
    )
    sentence = stripped[:end].rstrip()
    if len(sentence) > FIRST_SENTENCE_MAX_CHARS:
        cut = sentence.rfind(" ", 0, FIRST_SENTENCE_MAX_CHARS)
        sentence = sentence[: cut if cut > 0 else FIRST_SENTENCE_MAX_CHARS].rstrip()
    return sentence


def source_label(passage: GivenPassage) -> str:
    """ "guide.pdf, page 3, Install > On Linux" (what is known of it)."""
    parts = [passage.filename or f"document {passage.document_id}"]
    if passage.page is not None:
        parts.append(f"page {passage.page}")
    if passage.heading:
        parts.append(passage.heading)
    return ", ".join(parts)


def _attribute(value: str) -> str:
    return html.escape(" ".join(value.split()), quote=True)


def _block(passage: GivenPassage, *, text: str | None = None) -> str:
    attributes = [f'id="{passage.n}"']
    if passage.filename:
        attributes.append(f'file="{_attribute(passage.filename)}"')
    if passage.page is not None:
        attributes.append(f'page="{passage.page}"')
    if passage.heading:
        attributes.append(f'section="{_attribute(passage.heading)}"')
    body = passage.text if text is None else text
    return f"<source {' '.join(attributes)}>\n{body}\n{CLOSE_TAG}"


def _shortened(passage: GivenPassage, max_tokens: int) -> GivenPassage:
    """The passage cut to `max_tokens` at a word boundary (never an escaped tag cut open)."""
    text = truncate_to_tokens(passage.text, max_tokens)
    if len(text) < len(passage.text):
        cut = text.rfind(" ")
        if cut > 0:
            text = text[:cut]
        text = text.rstrip()
    return GivenPassage(
        n=passage.n,
        chunk_id=passage.chunk_id,
        document_id=passage.document_id,
        text=text,
        heading=passage.heading,
        page=passage.page,
        filename=passage.filename,
    )
