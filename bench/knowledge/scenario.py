"""The whole scenario on each shape: ingestion, quality, latency."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.knowledge.common import (
    DOCSTRINGS,
    FILLER_NOISE,
    LEXICAL,
    MODULE_PAGES,
    VECTOR_SEED,
    KnowledgeOptions,
)
from bench.knowledge.corpus import (
    Docstring,
    Judgements,
    docstring_markdown,
    load_judgements,
    module_pages,
    read_queries_file,
    stdlib_corpus,
)
from bench.knowledge.ingestion import Ingested, ingest
from bench.knowledge.latency import measure_latency, query_embedding_ms
from bench.knowledge.quality import measure_quality
from bench.knowledge.stores import (
    ShapeDatabase,
    create_knowledge_base,
    create_owner,
    postgres_missing,
    shape_database,
)

if TYPE_CHECKING:
    from chatplane.knowledge.embedders import Embedder


def embedder_label(setting: str) -> str:
    """The row name of an embeddings setting: `local`, `openai`; `lexical` for `none`."""
    kind = setting.partition(":")[0]
    return LEXICAL if kind == "none" else kind


VECTORS_NOTE = (
    "latency: a sample of documents is written with write_document and their real vectors; "
    "every other chunk row is a bulk insert of the corpus' chunk texts again, each with its "
    "text's real vector plus Gaussian noise ({noise} per dimension, seed {seed}), normalised, "
    "under the model's name (near copies: clustered like real text, so the recall of the "
    "binary-code vector search against the exact one means something at every size); "
    "quality uses only real vectors."
)


async def measure_knowledge(workdir: Path, options: KnowledgeOptions) -> dict[str, Any]:
    """Ingestion, latency and quality on each shape; the scenario's result block."""
    import aiohttp

    from chatplane.knowledge.embedders import EmbeddingsUnavailable, create_embedder
    from chatplane.settings import Settings

    await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
    spec = read_queries_file()
    modules = spec["corpus"]["modules"]
    corpus = await asyncio.to_thread(
        stdlib_corpus, modules, min_chars=int(spec["corpus"]["min_docstring_chars"])
    )
    judgements = load_judgements(spec, {doc.id for doc in corpus})
    corpus, judgements = _subset(corpus, judgements, options)
    block: dict[str, Any] = {
        "options": options.as_json(),
        "corpus": {
            "source": "docstrings of the Python standard library of the running interpreter",
            "python": sys.version.split()[0],
            "modules": len(modules),
            "documents": len(corpus),
            "characters": sum(len(doc.text) for doc in corpus),
        },
        "judgements": {
            "queries_in_file": len(spec["queries"]),
            "queries_evaluated": len(judgements.queries),
            "queries_skipped": judgements.skipped_queries,
            "judged_ids": judgements.judged_ids,
            "judged_ids_missing_from_corpus": judgements.missing_ids,
        },
        "embedder": {"setting": options.embedder, "model": None, "dim": None, "skipped": None},
        "shapes_skipped": {},
        "vectors": VECTORS_NOTE.format(seed=VECTOR_SEED, noise=FILLER_NOISE),
        "ingestion": {},
        "latency": {},
        "quality": {},
    }
    settings = Settings(_env_file=None, data_dir=workdir, embeddings=options.embedder)
    async with aiohttp.ClientSession() as http:
        embedder: Embedder | None = None
        try:
            embedder = create_embedder(settings, http)
        except EmbeddingsUnavailable as exc:
            block["embedder"]["skipped"] = exc.detail
        if embedder is None and block["embedder"]["skipped"] is None:
            block["embedder"]["skipped"] = f"CHATPLANE_EMBEDDINGS={options.embedder}"
        try:
            if embedder is not None:
                started = time.perf_counter()
                await embedder.embed(["load the model before anything is timed"])
                block["embedder"].update(
                    model=embedder.model,
                    dim=embedder.dim,
                    load_s=round(time.perf_counter() - started, 3),
                )
            for shape in options.shapes:
                missing = await postgres_missing() if shape == "postgres" else None
                if missing is not None:
                    block["shapes_skipped"][shape] = missing
                    continue
                async with shape_database(shape, workdir, options.embedder) as database:
                    block["databases"] = {**block.get("databases", {}), shape: database.name}
                    ingestion, latency, quality = await _measure_shape(
                        database, embedder, corpus, modules, judgements, options
                    )
                block["ingestion"][shape] = ingestion
                block["latency"][shape] = latency
                block["quality"][shape] = quality
        finally:
            if embedder is not None:
                await embedder.close()
    errors = sum(
        row.get("errors", 0)
        for shape in block["ingestion"].values()
        for corpus_rows in shape.values()
        for row in corpus_rows.values()
    )
    return {
        "server": {
            "shape": "in-process: KnowledgeIndex on a SQLite file and on a fresh Postgres "
            "database (dropped at the end); no HTTP server",
            "databases": block.pop("databases", {}),
        },
        "runs": {},
        "errors": errors,
        "knowledge": block,
    }


async def _measure_shape(
    database: ShapeDatabase,
    embedder: Embedder | None,
    corpus: Sequence[Docstring],
    modules: Sequence[str],
    judgements: Judgements,
    options: KnowledgeOptions,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    from chatplane.knowledge.index import KnowledgeIndex

    owner = await create_owner(database.db)
    corpora = {DOCSTRINGS: [(doc.id, docstring_markdown(doc)) for doc in corpus]}
    if options.module_pages:
        corpora[MODULE_PAGES] = module_pages(corpus, modules)
    embedded = embedder_label(options.embedder)
    rows_to_run: list[tuple[str, Embedder | None]] = [(LEXICAL, None)]
    if embedded != LEXICAL:
        rows_to_run.append((embedded, embedder))
    ingestion: dict[str, dict[str, Any]] = {}
    quality_kb: tuple[str, Ingested] | None = None
    for corpus_name, files in corpora.items():
        rows: dict[str, Any] = {}
        for label, chosen in rows_to_run:
            if chosen is None and label != LEXICAL:
                rows[label] = {"skipped": "no embedder"}
                continue
            if corpus_name == MODULE_PAGES and chosen is not None and not options.pages_embedded:
                rows[label] = {"skipped": "not run by default (--pages-embedded)"}
                continue
            model = chosen.model if chosen is not None else None
            kb_id = await create_knowledge_base(database.db, owner, f"{corpus_name} {label}", model)
            keep = corpus_name == DOCSTRINGS and chosen is embedder
            index = KnowledgeIndex(database.db, chosen)
            ingested = await ingest(database, index, owner, kb_id, files, keep=keep)
            rows[label] = ingested.stats
            if keep:
                quality_kb = (kb_id, ingested)
        ingestion[corpus_name] = rows
    if quality_kb is None:
        raise RuntimeError("the docstrings corpus was not ingested")
    kb_id, ingested = quality_kb
    quality = await measure_quality(
        database.db, embedder, owner, kb_id, ingested.source_of, judgements
    )
    queries = [query.text for query in judgements.queries]
    latency = await measure_latency(database, owner, embedder, ingested, queries, options)
    if embedder is not None:
        latency["query_embedding_ms"] = await query_embedding_ms(embedder, queries)
    return ingestion, latency, quality


def _subset(
    corpus: list[Docstring], judgements: Judgements, options: KnowledgeOptions
) -> tuple[list[Docstring], Judgements]:
    """A tiny run: the first `queries` queries, their judged documents and `distractors`
    other documents (the first by id)."""
    if options.queries is None:
        return corpus, judgements
    queries = judgements.queries[: options.queries]
    judged = {doc_id for query in queries for doc_id in query.relevant}
    others = [doc for doc in corpus if doc.id not in judged][: options.distractors or 0]
    kept = [doc for doc in corpus if doc.id in judged] + others
    return sorted(kept, key=lambda d: d.id), Judgements(
        queries,
        sum(len(q.relevant) for q in queries),
        judgements.missing_ids,
        judgements.skipped_queries,
    )
