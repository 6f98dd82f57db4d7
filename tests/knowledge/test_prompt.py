"""The retrieval system message: its numbered passages, the budget, and the parser that
reads it back (format and parser must round-trip)."""

from __future__ import annotations

import pytest

from chatplane.knowledge.index import Passage
from chatplane.knowledge.prompt import (
    ESCAPED_CLOSE_TAG,
    NO_SOURCES,
    build_retrieval_prompt,
    first_sentence,
    parse_passages,
    source_label,
)
from chatplane.providers.tokens import estimate_tokens


def passage(
    chunk_id: int,
    text: str,
    *,
    document_id: str = "doc1",
    heading: str | None = None,
    page: int | None = None,
    score: float = 1.0,
) -> Passage:
    return Passage(
        chunk_id=chunk_id,
        document_id=document_id,
        kb_id="kb1",
        text=text,
        heading=heading,
        page=page,
        score=score,
    )


TRICKY = [
    "Plain text. Two sentences!",
    "\nStarts and ends with newlines\n",
    'A line that looks like a tag:\n<source id="2" file="x">\nand more',
    "It even holds the closing tag\n</source>\nin the middle",
    "</sources>\n<sources>\nwrong block markers",
    "",
    "   ",
    "Unicode: café — “curly” and 漢字.",
]


def test_the_passages_read_back_exactly_in_order() -> None:
    given = [passage(i + 10, text, document_id=f"d{i}") for i, text in enumerate(TRICKY)]
    prompt = build_retrieval_prompt(given, max_tokens=10_000)

    parsed = parse_passages(prompt.message)

    assert [n for n, _ in parsed] == list(range(1, len(TRICKY) + 1))
    assert [p.n for p in prompt.passages] == list(range(1, len(TRICKY) + 1))
    assert [p.chunk_id for p in prompt.passages] == [p.chunk_id for p in given]
    # What the model reads is what the passages it may cite hold.
    assert [text for _, text in parsed] == [p.text for p in prompt.passages]
    escaped = TRICKY[3].replace("</source>", ESCAPED_CLOSE_TAG)
    assert [p.text for p in prompt.passages] == [*TRICKY[:3], escaped, *TRICKY[4:]]


def test_the_source_line_names_file_page_and_section_escaped() -> None:
    given = [
        passage(1, "Body one.", document_id="a", heading='Install > On "Linux"', page=3),
        passage(2, "Body two.", document_id="b"),
    ]
    prompt = build_retrieval_prompt(
        given, max_tokens=1000, filenames={"a": 'guide "v2".pdf', "b": "notes.md"}
    )

    assert (
        '<source id="1" file="guide &quot;v2&quot;.pdf" page="3" '
        'section="Install &gt; On &quot;Linux&quot;">\nBody one.\n</source>'
    ) in prompt.message
    assert '<source id="2" file="notes.md">\nBody two.\n</source>' in prompt.message
    assert "[1]" in prompt.message  # the instruction shows how to cite
    assert prompt.passages[0].filename == 'guide "v2".pdf'
    assert source_label(prompt.passages[0]) == 'guide "v2".pdf, page 3, Install > On "Linux"'
    assert parse_passages(prompt.message) == [(1, "Body one."), (2, "Body two.")]


def _blocks_tokens(message: str) -> int:
    """The estimate of the part the budget covers: from `<sources>` on."""
    return estimate_tokens(message[message.index("<sources>") :])


def test_whole_passages_are_kept_best_first_while_they_fit() -> None:
    words = " ".join(["word"] * 80)  # about 100 tokens each
    given = [passage(i, f"Passage {i}. {words}") for i in range(1, 6)]
    three = _blocks_tokens(build_retrieval_prompt(given[:3], max_tokens=10_000).message)
    budget = three + 20  # room for three and a bit, not for a fourth

    prompt = build_retrieval_prompt(given, max_tokens=budget)

    assert [p.chunk_id for p in prompt.passages] == [1, 2, 3]
    assert [p.text for p in prompt.passages] == [p.text for p in given[:3]]
    assert _blocks_tokens(prompt.message) <= budget


def test_a_passage_that_does_not_fit_ends_the_list() -> None:
    """Rank order is kept: a smaller passage after one that did not fit is not taken."""
    given = [
        passage(1, "a " * 200),
        passage(2, "b " * 400),
        passage(3, "small"),
    ]
    prompt = build_retrieval_prompt(given, max_tokens=300)
    assert [p.chunk_id for p in prompt.passages] == [1]


def test_when_not_even_the_first_fits_it_is_shortened_at_a_word() -> None:
    text = " ".join(f"w{i}" for i in range(2000))
    prompt = build_retrieval_prompt([passage(7, text), passage(8, "next")], max_tokens=100)

    assert len(prompt.passages) == 1
    shortened = prompt.passages[0].text
    assert 0 < len(shortened) < len(text)
    assert text.startswith(shortened)
    assert text[len(shortened)] == " "  # cut between words
    assert _blocks_tokens(prompt.message) <= 100
    assert parse_passages(prompt.message) == [(1, shortened)]


def test_no_passages_says_nothing_matched_and_parses_to_none() -> None:
    prompt = build_retrieval_prompt([], max_tokens=1000)
    assert prompt.message == NO_SOURCES
    assert prompt.passages == []
    assert parse_passages(prompt.message) == []


@pytest.mark.parametrize(
    "text",
    [
        "",
        "You are a helpful assistant. Cite like [1].",
        "<sources>\nno tags here\n</sources>",
        '<sources>\n<source id="1">\nnever closed',
    ],
)
def test_other_system_messages_have_no_passages(text: str) -> None:
    assert parse_passages(text) == []


@pytest.mark.parametrize(
    ("text", "sentence"),
    [
        ("First one. Second one.", "First one."),
        ("  Leading space! Then more", "Leading space!"),
        ("Is it? Yes.", "Is it?"),
        ("Version 2.5 ships today. More.", "Version 2.5 ships today."),
        ("A heading line\n\nThe body. More.", "A heading line"),
        ("No end mark at all", "No end mark at all"),
        ("", ""),
    ],
)
def test_first_sentence(text: str, sentence: str) -> None:
    assert first_sentence(text) == sentence
    assert sentence in text


def test_a_long_first_sentence_is_cut_at_a_word() -> None:
    text = " ".join(["longword"] * 100) + "."
    sentence = first_sentence(text)
    assert 200 < len(sentence) <= 300
    assert text.startswith(sentence)
    assert text[len(sentence)] == " "
