"""Chunk bounds, overlap, boundaries and coverage, on generated text and on real files."""

from __future__ import annotations

import itertools
import random
import re
import string

import pytest

from chatplane.knowledge.chunking import ChunkDraft, chunk_document
from chatplane.knowledge.extract import (
    DOCX,
    PDF,
    ExtractedDocument,
    Section,
    extract,
)
from chatplane.providers.tokens import estimate_tokens
from tests.knowledge.files import docx_bytes, pdf_bytes

WORDS = [
    *("index", "retrieval", "chunk", "token", "vector", "answer", "citation", "page"),
    *("heading", "section", "worker", "queue", "tenant", "upload", "document", "model"),
    *("budget", "stream", "event", "latency"),
]


def sentence(rng: random.Random, low: int = 4, high: int = 18) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(low, high))]
    return " ".join(words).capitalize() + rng.choice([".", ".", "!", "?"])


def paragraphs(rng: random.Random, count: int, sentences: tuple[int, int] = (1, 7)) -> str:
    return "\n\n".join(
        " ".join(sentence(rng) for _ in range(rng.randint(*sentences))) for _ in range(count)
    )


def document(*sections: Section) -> ExtractedDocument:
    return ExtractedDocument(media_type="text/plain", sections=list(sections), pages=None)


def spans(section_text: str, chunks: list[ChunkDraft]) -> list[tuple[int, int]]:
    """Where each chunk sits in its section: every chunk must be an exact slice, in order."""
    found, cursor = [], 0
    for chunk in chunks:
        start = section_text.find(chunk.text, cursor)
        assert start >= 0, f"chunk {chunk.ord} is not a slice of its section"
        found.append((start, start + len(chunk.text)))
        cursor = start + 1
    return found


def assert_well_formed(doc: ExtractedDocument, chunks: list[ChunkDraft], max_tokens: int) -> None:
    assert [c.ord for c in chunks] == list(range(len(chunks)))
    for chunk in chunks:
        assert chunk.tokens == estimate_tokens(chunk.text) <= max_tokens
        assert chunk.text == chunk.text.strip()
        assert chunk.text
    for section in doc.sections:
        mine = [c for c in chunks if (c.heading, c.page) == (section.heading, section.page)]
        covered = [False] * len(section.text)
        for start, end in spans(section.text, mine):
            covered[start:end] = [True] * (end - start)
        missing = [
            i for i, char in enumerate(section.text) if not char.isspace() and not covered[i]
        ]
        assert not missing, f"text not in any chunk: {section.text[missing[0] : missing[0] + 40]!r}"


@pytest.mark.parametrize(
    ("max_tokens", "overlap_tokens"), [(32, 0), (40, 10), (64, 16), (120, 30), (350, 50)]
)
def test_chunks_stay_in_bounds_and_cover_every_word(max_tokens: int, overlap_tokens: int) -> None:
    rng = random.Random(max_tokens)
    doc = document(
        Section(paragraphs(rng, 12), None, 1),
        Section(paragraphs(rng, 3), "Install", 2),
        Section(paragraphs(rng, 20, (3, 9)), "Install > On Linux", 2),
    )
    chunks = chunk_document(doc, max_tokens=max_tokens, overlap_tokens=overlap_tokens)
    assert_well_formed(doc, chunks, max_tokens)
    assert [(c.heading, c.page) for c in chunks] == sorted(
        ((c.heading, c.page) for c in chunks),
        key=[(s.heading, s.page) for s in doc.sections].index,
    )


def test_consecutive_chunks_of_a_section_overlap_by_whole_sentences() -> None:
    text = " ".join(f"Sentence number {i} is short." for i in range(60))  # 8 tokens each
    doc = document(Section(text, "H", None))
    chunks = chunk_document(doc, max_tokens=60, overlap_tokens=20)
    assert len(chunks) > 3
    located = spans(text, chunks)
    for (previous, current), chunk in zip(itertools.pairwise(located), chunks[1:], strict=True):
        shared = text[current[0] : previous[1]]
        assert current[0] < previous[1], "no overlap"
        assert estimate_tokens(shared) <= 20
        assert estimate_tokens(shared) > 20 - 8  # about the overlap: as many sentences as fit
        assert chunk.text.startswith("Sentence number ")  # a whole sentence, not a fragment


def test_overlap_falls_back_to_words_when_no_whole_sentence_fits() -> None:
    text = " ".join(f"Clause {i:02} goes on with many more words to the end." for i in range(40))
    assert estimate_tokens("Clause 00 goes on with many more words to the end.") > 10
    chunks = chunk_document(document(Section(text, None, None)), max_tokens=50, overlap_tokens=10)
    located = spans(text, chunks)
    for previous, current in itertools.pairwise(located):
        assert current[0] < previous[1]
        assert 0 < estimate_tokens(text[current[0] : previous[1]]) <= 10
        assert text[current[0] - 1] == " "  # starts on a word


def test_no_overlap_when_overlap_is_zero() -> None:
    rng = random.Random(3)
    text = paragraphs(rng, 15)
    chunks = chunk_document(document(Section(text, None, None)), max_tokens=50, overlap_tokens=0)
    located = spans(text, chunks)
    assert all(b[0] >= a[1] for a, b in itertools.pairwise(located))
    assert " ".join(c.text for c in chunks).split() == text.split()


def test_chunks_prefer_to_end_at_paragraphs() -> None:
    # Two paragraphs and the next one's first sentence fit in 70 tokens, but the chunk ends
    # after the two paragraphs instead.
    paras = [
        f"Paragraph {i:02} first part has several more words. "
        "Then its second sentence goes on a little longer."
        for i in range(12)
    ]
    text = "\n\n".join(paras)
    assert estimate_tokens(text[: text.index("words.", len(paras[0]) * 2 + 4) + 6]) <= 70
    chunks = chunk_document(document(Section(text, None, None)), max_tokens=70, overlap_tokens=0)
    assert [c.text for c in chunks] == [
        "\n\n".join(paras[i : i + 2]) for i in range(0, len(paras), 2)
    ]


def test_a_sentence_longer_than_a_chunk_is_cut_at_words_and_a_huge_word_at_characters() -> None:
    long_sentence = " ".join(f"w{i}" for i in range(300))  # ~300 tokens, one sentence
    blob = "".join(random.Random(1).choices(string.ascii_letters, k=5000))  # 1250 tokens
    text = f"Short start. {long_sentence}. Middle.\n\n{blob}\n\nShort end."
    doc = document(Section(text, None, None))
    chunks = chunk_document(doc, max_tokens=64, overlap_tokens=8)
    assert_well_formed(doc, chunks, 64)
    assert sum(c.text.isalpha() for c in chunks) == 1250 // 64  # full slices of the blob


def test_sections_never_share_a_chunk_and_empty_ones_give_none() -> None:
    doc = document(
        Section("Alpha one.", "A", 1),
        Section("   \n\n  ", "B", 1),
        Section("Beta two.", "A", 2),
        Section("Gamma three.", "A > C", 2),
    )
    chunks = chunk_document(doc, max_tokens=100, overlap_tokens=10)
    assert chunks == [
        ChunkDraft(0, "Alpha one.", "A", 1, estimate_tokens("Alpha one.")),
        ChunkDraft(1, "Beta two.", "A", 2, estimate_tokens("Beta two.")),
        ChunkDraft(2, "Gamma three.", "A > C", 2, estimate_tokens("Gamma three.")),
    ]


def test_chunking_is_deterministic() -> None:
    rng = random.Random(11)
    doc = document(Section(paragraphs(rng, 30), "H", None), Section(paragraphs(rng, 5), None, 2))
    first = chunk_document(doc, max_tokens=70, overlap_tokens=15)
    assert first == chunk_document(doc, max_tokens=70, overlap_tokens=15)


@pytest.mark.parametrize(("max_tokens", "overlap_tokens"), [(50, 50), (50, 60), (50, -1), (0, 0)])
def test_bad_bounds_are_refused(max_tokens: int, overlap_tokens: int) -> None:
    with pytest.raises(ValueError, match="tokens must be"):
        chunk_document(
            document(Section("x", None, None)), max_tokens=max_tokens, overlap_tokens=overlap_tokens
        )


def test_pdf_chunks_keep_their_pages() -> None:
    rng = random.Random(5)
    pages = [" ".join(sentence(rng) for _ in range(25)) for _ in range(3)]
    doc = extract(pdf_bytes(pages), PDF)
    chunks = chunk_document(doc, max_tokens=80, overlap_tokens=20)
    assert_well_formed(doc, chunks, 80)
    assert {c.page for c in chunks} == {1, 2, 3}
    for chunk in chunks:
        assert chunk.page is not None
        words = set(re.findall(r"\w+", chunk.text))
        assert words <= set(re.findall(r"\w+", pages[chunk.page - 1]))


def test_docx_chunks_keep_their_heading_paths() -> None:
    rng = random.Random(9)
    doc = extract(
        docx_bytes(
            [
                ("h1", "Install"),
                ("p", paragraphs(rng, 1, (8, 8))),
                ("h2", "On Linux"),
                ("p", paragraphs(rng, 1, (8, 8))),
                ("h1", "Usage"),
                ("p", paragraphs(rng, 1, (2, 2))),
            ]
        ),
        DOCX,
    )
    chunks = chunk_document(doc, max_tokens=60, overlap_tokens=10)
    assert_well_formed(doc, chunks, 60)
    assert {c.heading for c in chunks} == {"Install", "Install > On Linux", "Usage"}
    order: list[str | None] = ["Install", "Install > On Linux", "Usage"]
    headings = [c.heading for c in chunks]
    assert headings == sorted(headings, key=order.index)
