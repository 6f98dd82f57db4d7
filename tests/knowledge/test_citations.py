"""Citations: markers that name a passage given to the model, with quotes checked against
that passage; markers that name none are dropped and counted."""

from __future__ import annotations

from chatplane.knowledge.citations import find_verbatim, resolve_citations
from chatplane.knowledge.prompt import GivenPassage
from tests.observability.support import local

DROPPED = "chatplane_citations_dropped_total"


def given(*texts: str) -> list[GivenPassage]:
    return [
        GivenPassage(
            n=i,
            chunk_id=100 + i,
            document_id=f"doc{i}",
            text=text,
            heading=None,
            page=i if i % 2 else None,
            filename=f"file{i}.md",
        )
        for i, text in enumerate(texts, start=1)
    ]


PASSAGES = given(
    "Chatplane runs on a laptop. It scales out on Postgres and Redis.",
    "Uploads above 50 MB are refused. The limit is configurable.",
    'The mock model says "hello" to everyone. Then it stops.',
)


def test_an_exact_quote_after_the_marker_is_kept() -> None:
    answer = 'It scales [1] "It scales out on Postgres and Redis." easily.'
    citations, dropped = resolve_citations(answer, PASSAGES)
    assert dropped == 0
    assert [c.to_json() for c in citations] == [
        {
            "n": 1,
            "document_id": "doc1",
            "chunk_id": 101,
            "page": 1,
            "quote": "It scales out on Postgres and Redis.",
            "filename": "file1.md",
        }
    ]


def test_curly_quotes_and_a_colon_are_understood() -> None:
    answer = "Big files fail [2]: \u201cUploads above 50 MB are refused\u201d."
    citations, _ = resolve_citations(answer, PASSAGES)
    assert [(c.n, c.quote) for c in citations] == [(2, "Uploads above 50 MB are refused")]


def test_a_quote_not_in_the_passage_falls_back_to_its_first_sentence() -> None:
    answer = 'Limits [2] "uploads of any size are welcome" and more [1].'
    citations, _ = resolve_citations(answer, PASSAGES)
    assert [(c.n, c.quote) for c in citations] == [
        (2, "Uploads above 50 MB are refused."),
        (1, "Chatplane runs on a laptop."),
    ]


def test_a_quote_with_quotes_inside_is_matched_whole() -> None:
    answer = '[3] "The mock model says "hello" to everyone." That is all.'
    citations, _ = resolve_citations(answer, PASSAGES)
    assert citations[0].quote == 'The mock model says "hello" to everyone.'


def test_a_quote_may_wrap_where_the_passage_does_not() -> None:
    passages = given("First line of the text\ncontinues on the next line. End.")
    answer = '[1] "of the text continues on the next"'
    citations, _ = resolve_citations(answer, passages)
    # The passage's own words: verifiable by substring.
    assert citations[0].quote == "of the text\ncontinues on the next"
    assert citations[0].quote in passages[0].text


def test_markers_naming_no_given_passage_are_dropped_and_counted() -> None:
    before = local(DROPPED)
    answer = "See [7] and [0] and [2] and again [7], also [3, 9]."
    citations, dropped = resolve_citations(answer, PASSAGES)
    assert [c.n for c in citations] == [2, 3]
    assert dropped == 3  # 7, 0 and 9, each once
    assert local(DROPPED) == before + 3


def test_each_passage_once_in_order_of_first_mention() -> None:
    answer = "B [2]. A [1]. B again [2]. A again [1][2]."
    citations, dropped = resolve_citations(answer, PASSAGES)
    assert [c.n for c in citations] == [2, 1]
    assert dropped == 0


def test_a_later_mention_can_supply_the_quote() -> None:
    answer = 'Fact [1]. As it says, [1] "Chatplane runs on a laptop."'
    citations, _ = resolve_citations(answer, PASSAGES)
    assert [(c.n, c.quote) for c in citations] == [(1, "Chatplane runs on a laptop.")]


def test_indexes_and_plain_text_are_not_markers() -> None:
    before = local(DROPPED)
    answer = "Use items[0] or xs[12]; nothing [here]; [ 1 ] is not one either."
    assert resolve_citations(answer, PASSAGES) == ([], 0)
    assert local(DROPPED) == before


def test_no_passages_given_drops_every_marker() -> None:
    citations, dropped = resolve_citations("It says [1] and [2].", [])
    assert citations == []
    assert dropped == 2


def test_find_verbatim() -> None:
    assert find_verbatim("a  b\tc", "a b c") == "a  b\tc"
    assert find_verbatim("abc", "abd") is None
    assert find_verbatim("abc", "   ") is None
    assert find_verbatim("a.b (c)", "a.b (c)") == "a.b (c)"
