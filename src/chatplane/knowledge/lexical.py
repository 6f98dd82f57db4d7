"""Lexical retrieval: FTS5 + bm25 on SQLite, the `tsv` column + idf-weighted ts_rank on
Postgres.

A user's query never reaches either query language as written: it is cut into word terms
(letters and digits), stop words are dropped, and the rest are quoted and OR-ed. So quotes,
`AND`, `NEAR(`, `*`, `:` or `!` are plain text, and a query with no word left (only
punctuation or stop words) matches nothing instead of failing.

One statement per search: the match, the tenant / knowledge base / document filters, the
ranking and the limit all run in the database.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from sqlalchemy import BindParameter, TextClause, bindparam, text
from sqlalchemy.ext.asyncio import AsyncSession

# Postgres' `english` stop words (the Snowball list), dropped on both databases so the two
# shapes answer alike (FTS5 has no stop words of its own).
_STOP_WORDS = """i me my myself we our ours ourselves you your yours yourself yourselves he him his
    himself she her hers herself it its itself they them their theirs themselves what which
    who whom this that these those am is are was were be been being have has had having do
    does did doing a an the and but if or because as until while of at by for with about
    against between into through during before after above below to from up down in out on
    off over under again further then once here there when where why how all any both each
    few more most other some such no nor not only own same so than too very s t can will just
    don should now"""
STOP_WORDS = frozenset(_STOP_WORDS.split())
MAX_QUERY_TERMS = 32
MAX_TERM_CHARS = 64
# A term in this many chunks or more is common: left out of a ranked match when the query
# has rarer terms (see `plan_query`).
COMMON_DF = 1000
# The ranked match takes rare terms, rarest first, while their frequencies add up to this.
RANKED_BUDGET = 2000
# bm25 column weights (heading, text): a hit in the heading path counts more, as the
# heading's weight A does against the text's B on Postgres.
HEADING_WEIGHT = 2.0
TEXT_WEIGHT = 1.0

# ts_rank's weights of the labels D, C, B (text) and A (heading): the same ratio as bm25's.
_PG_RANK_WEIGHTS = f"ARRAY[0.1, 0.2, {TEXT_WEIGHT / HEADING_WEIGHT}, 1.0]::float4[]"

# Letters and digits; `_` splits words as FTS5's unicode61 tokenizer does.
_WORD = re.compile(r"[^\W_]+")


@dataclass(frozen=True, slots=True)
class LexicalHit:
    chunk_id: int
    document_id: str
    kb_id: str
    text: str
    heading: str | None
    page: int | None
    score: float  # higher is better


def has_words(query: str) -> bool:
    """Whether the query has any letter or digit (a stop word counts)."""
    return _WORD.search(query) is not None


def query_terms(query: str) -> list[str]:
    """The distinct search terms of a user's query, lower-cased, in order."""
    terms: dict[str, None] = {}
    for match in _WORD.finditer(query.lower()):
        word = match.group()
        if word in STOP_WORDS or len(word) > MAX_TERM_CHARS:
            continue
        terms[word] = None
        if len(terms) == MAX_QUERY_TERMS:
            break
    return list(terms)


def fts5_match(terms: Sequence[str], operator: str = "OR") -> str:
    """An FTS5 MATCH expression: every term a quoted string, joined by `operator`."""
    return f" {operator} ".join(f'"{term}"' for term in terms)


def tsquery_text(terms: Sequence[str], operator: str = "|") -> str:
    """A `to_tsquery` input: every term a quoted lexeme, joined by `operator`."""
    return f" {operator} ".join(f"'{term}'" for term in terms)


@dataclass(frozen=True, slots=True)
class Plan:
    """What to match: the rarer terms OR-ed and ranked, or (when every term is common) all
    of them AND-ed, newest first, unranked (score 0)."""

    terms: list[str]
    ranked: bool


def plan_query(frequencies: dict[str, int]) -> Plan | None:
    """Choose the terms to match from their (capped) document frequencies; None when no
    term occurs anywhere.

    Ranking costs the database work for every matching chunk (bm25 / ts_rank) and every
    posting of every ranked term, so a term in `COMMON_DF` chunks or more is left out when
    rarer terms exist (its weight in the rank is small anyway), and rare terms join from
    the rarest while their frequencies add up to at most `RANKED_BUDGET`."""
    present = [(df, term) for term, df in frequencies.items() if df > 0]
    if not present:
        return None
    rare = sorted((df, term) for df, term in present if df < COMMON_DF)
    if not rare:
        return Plan([term for _, term in present], ranked=False)
    chosen: list[str] = []
    total = 0
    for df, term in rare:
        if chosen and total + df > RANKED_BUDGET:
            break
        chosen.append(term)
        total += df
    return Plan(chosen, ranked=True)


_FILTERS = "c.tenant_id = :tenant_id AND c.kb_id IN :kb_ids"
_DOCUMENT_FILTER = " AND c.document_id IN :document_ids"
_COLUMNS = "c.id, c.document_id, c.kb_id, c.text, c.heading, c.page"

# The ranked statements order ids and scores first and read the texts of the winners only.
_SQLITE_RANKED = f"""
WITH best AS (
    SELECT c.id AS id, -bm25(kb_chunks_fts, {HEADING_WEIGHT}, {TEXT_WEIGHT}) AS score
    FROM kb_chunks_fts JOIN kb_chunks AS c ON c.id = kb_chunks_fts.rowid
    WHERE kb_chunks_fts MATCH :match AND {{filters}}
    ORDER BY score DESC, c.id
    LIMIT :limit
)
SELECT {_COLUMNS}, best.score FROM best JOIN kb_chunks AS c ON c.id = best.id
ORDER BY best.score DESC, c.id
"""
_SQLITE_NEWEST = f"""
SELECT {_COLUMNS}, 0.0
FROM kb_chunks_fts JOIN kb_chunks AS c ON c.id = kb_chunks_fts.rowid
WHERE kb_chunks_fts MATCH :match AND {{filters}}
ORDER BY kb_chunks_fts.rowid DESC
LIMIT :limit
"""
# Postgres: `ts_rank_cd` has no inverse document frequency, so a chunk full of common words
# would outrank the one with the rare word that matters. The score has bm25's shape instead:
# per term, its idf (from the document frequencies the plan read, over the table's rows as
# the statistics count them) times `ts_rank` of that term alone (saturating in the term's
# occurrences, the heading weighted above the text as on SQLite), summed. Only the chunks
# of the match (bounded by the plan) are scored.
_POSTGRES_RANKED = f"""
WITH total AS (
    SELECT greatest(reltuples, pg_stat_get_live_tuples(oid), 0) AS n
    FROM pg_class WHERE oid = to_regclass('kb_chunks')
), terms AS MATERIALIZED (
    SELECT to_tsquery('english', quote_literal(t.term)) AS query,
           ln(1 + (greatest(coalesce(total.n, 0), t.df) - t.df + 0.5) / (t.df + 0.5)) AS idf
    FROM unnest(CAST(:terms AS text[]), CAST(:dfs AS float8[])) AS t(term, df)
    LEFT JOIN total ON true
), best AS (
    SELECT c.id AS id,
           (SELECT sum(terms.idf * ts_rank({_PG_RANK_WEIGHTS}, c.tsv, terms.query))
            FROM terms) AS score
    FROM kb_chunks AS c
    WHERE c.tsv @@ to_tsquery('english', :match) AND {{filters}}
    ORDER BY score DESC, c.id
    LIMIT :limit
)
SELECT {_COLUMNS}, best.score FROM best JOIN kb_chunks AS c ON c.id = best.id
ORDER BY best.score DESC, c.id
"""
_POSTGRES_NEWEST = f"""
SELECT {_COLUMNS}, 0.0
FROM kb_chunks AS c
WHERE c.tsv @@ to_tsquery('english', :match) AND {{filters}}
ORDER BY c.id DESC
LIMIT :limit
"""
_SEARCH_SQL = {
    ("sqlite", True): _SQLITE_RANKED,
    ("sqlite", False): _SQLITE_NEWEST,
    ("postgresql", True): _POSTGRES_RANKED,
    ("postgresql", False): _POSTGRES_NEWEST,
}


@cache
def _search_statement(dialect: str, ranked: bool, with_documents: bool) -> TextClause:
    filters = _FILTERS + (_DOCUMENT_FILTER if with_documents else "")
    params: list[BindParameter[Any]] = [bindparam("kb_ids", expanding=True)]
    if with_documents:
        params.append(bindparam("document_ids", expanding=True))
    return text(_SEARCH_SQL[dialect, ranked].format(filters=filters)).bindparams(*params)


# SQLite: count each term's postings up to `:cap` (a few index pages a term).
_SQLITE_PROBE = (
    "(SELECT count(*) FROM (SELECT 1 FROM kb_chunks_fts"
    " WHERE kb_chunks_fts MATCH :t{i} LIMIT :cap))"
)
# Postgres: a GIN bitmap of a common term cannot stop early, so the common terms come from
# the planner's statistics (the most common lexemes of `tsv` and their frequencies, kept by
# ANALYZE / autovacuum); the others are counted like on SQLite, cheaply since they are rare.
# A term with no lexeme (a stop word) matches nothing (0).
_POSTGRES_FREQUENCIES = text(
    """WITH stats AS MATERIALIZED (
    SELECT s.most_common_elems::text::text[] AS elems, s.most_common_elem_freqs AS freqs,
           greatest(c.reltuples, pg_stat_get_live_tuples(c.oid), 0) AS n
    FROM pg_stats AS s
    JOIN pg_namespace AS ns ON ns.nspname = s.schemaname
    JOIN pg_class AS c ON c.relnamespace = ns.oid AND c.relname = s.tablename
    WHERE s.schemaname = current_schema() AND s.tablename = 'kb_chunks' AND s.attname = 'tsv'
), common AS (
    SELECT e.elem, e.freq * stats.n AS df
    FROM stats, unnest(stats.elems, stats.freqs) AS e(elem, freq)
    WHERE e.elem IS NOT NULL
)
SELECT t.i, CASE
    WHEN count(l.lexeme) = 0 THEN 0
    WHEN max(common.df) IS NOT NULL THEN max(common.df)
    ELSE (SELECT count(*) FROM (
        SELECT 1 FROM kb_chunks AS k
        WHERE k.tsv @@ to_tsquery('english', quote_literal(t.term)) LIMIT :cap) AS probe)
    END
FROM unnest(CAST(:terms AS text[])) WITH ORDINALITY AS t(term, i)
LEFT JOIN LATERAL unnest(tsvector_to_array(to_tsvector('english', t.term))) AS l(lexeme) ON true
LEFT JOIN common ON common.elem = l.lexeme
GROUP BY t.i, t.term
ORDER BY t.i"""
)


# Postgres plans and ranks lexical searches from the table's statistics (the most common
# lexemes of `tsv`, read by `_POSTGRES_FREQUENCIES`). Autovacuum refreshes them a minute or
# more after a table grew; until then every term is counted through its whole posting list:
# 100k chunks searched right after a bulk fill took ~870 ms p50 here, 15 ms once analyzed.
# So the writer of chunks refreshes them when a tenth of the table (and at least
# `STALE_MIN_ROWS` rows) changed since they were taken; one process at a time.
STALE_SHARE = 0.1
STALE_MIN_ROWS = 1000
_ANALYZE_LOCK = 0x6B625F63686B  # pg_try_advisory_xact_lock key: "kb_chk"
_POSTGRES_CHANGED = text(
    """SELECT s.n_mod_since_analyze, greatest(c.reltuples, 0)
    FROM pg_stat_user_tables AS s JOIN pg_class AS c ON c.oid = s.relid
    WHERE s.relid = to_regclass('kb_chunks')"""
)


async def refresh_statistics(session: AsyncSession, dialect: str, *, force: bool = False) -> bool:
    """Analyze `kb_chunks` on Postgres when its statistics are stale (always with `force`);
    whether it did. SQLite's FTS5 needs none. Commits the caller's session."""
    if dialect != "postgresql":
        return False
    if not force:
        row = (await session.execute(_POSTGRES_CHANGED)).one_or_none()
        if row is None or row[0] < max(STALE_MIN_ROWS, STALE_SHARE * float(row[1])):
            return False
    locked = await session.execute(
        text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": _ANALYZE_LOCK}
    )
    if not locked.scalar_one():
        return False  # another process is analyzing it now
    await session.execute(text("ANALYZE kb_chunks"))
    await session.commit()
    return True


@cache
def _sqlite_frequency_statement(count: int) -> TextClause:
    return text("SELECT " + ", ".join(_SQLITE_PROBE.format(i=i) for i in range(count)))


async def term_frequencies(
    session: AsyncSession, dialect: str, terms: Sequence[str]
) -> dict[str, int]:
    """About how many chunks contain each term, over every tenant (the cost of matching a
    term depends on its whole posting list); exact up to `COMMON_DF` on SQLite."""
    if dialect == "sqlite":
        params: dict[str, object] = {f"t{i}": fts5_match([t]) for i, t in enumerate(terms)}
        params["cap"] = COMMON_DF
        row = (await session.execute(_sqlite_frequency_statement(len(terms)), params)).one()
        return dict(zip(terms, (int(n) for n in row), strict=True))
    params = {"terms": list(terms), "cap": COMMON_DF}
    rows = (await session.execute(_POSTGRES_FREQUENCIES, params)).all()
    return {terms[int(i) - 1]: round(float(df)) for i, df in rows}


async def lexical_search(
    session: AsyncSession,
    *,
    dialect: str,
    tenant_id: str,
    kb_ids: Sequence[str],
    terms: Sequence[str],
    limit: int,
    document_ids: Sequence[str] | None = None,
) -> list[LexicalHit]:
    """The best `limit` chunks for the terms, best first; [] when there is nothing to
    search for (no terms, no knowledge base, an empty document filter). Two statements:
    the terms' frequencies, then the search with every filter inside it."""
    if not terms or not kb_ids or limit <= 0 or (document_ids is not None and not document_ids):
        return []
    dialect = "sqlite" if dialect == "sqlite" else "postgresql"
    frequencies = await term_frequencies(session, dialect, terms)
    plan = plan_query(frequencies)
    if plan is None:
        return []
    if dialect == "sqlite":
        match = fts5_match(plan.terms, "OR" if plan.ranked else "AND")
    else:
        match = tsquery_text(plan.terms, "|" if plan.ranked else "&")
    params: dict[str, object] = {
        "match": match,
        "tenant_id": tenant_id,
        "kb_ids": list(kb_ids),
        "limit": limit,
    }
    if document_ids is not None:
        params["document_ids"] = list(document_ids)
    if dialect == "postgresql" and plan.ranked:
        params["terms"] = plan.terms
        params["dfs"] = [float(frequencies[term]) for term in plan.terms]
    statement = _search_statement(dialect, plan.ranked, document_ids is not None)
    rows = (await session.execute(statement, params)).all()
    return [
        LexicalHit(
            chunk_id=row[0],
            document_id=row[1],
            kb_id=row[2],
            text=row[3],
            heading=row[4],
            page=row[5],
            score=float(row[6]),
        )
        for row in rows
    ]
