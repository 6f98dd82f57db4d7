"""Latency: search p50/p99 at growing numbers of chunks."""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from bench.knowledge.common import HYBRID, LEXICAL, KnowledgeOptions, machine_cpu
from bench.knowledge.ingestion import Ingested
from bench.knowledge.stores import (
    Filler,
    Owner,
    ShapeDatabase,
    create_knowledge_base,
    document_row,
    insert_documents,
)
from bench.procs import system_cpu
from bench.stats import distribution_ms

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from chatplane.knowledge.embedders import Embedder
    from chatplane.knowledge.index import KnowledgeIndex


async def write_sample(
    shape: ShapeDatabase,
    index: KnowledgeIndex,
    owner: Owner,
    kb_id: str,
    ingested: Ingested,
    documents: int,
    max_chunks: int,
) -> int:
    """Up to `documents` docstrings (and `max_chunks` chunks) through the real
    write_document, with their drafts and vectors from the ingestion (nothing is embedded
    twice); returns the chunks written."""
    sources: list[str] = []
    chunks = 0
    for source, drafts in itertools.islice(ingested.drafts.items(), documents):
        if chunks + len(drafts) > max_chunks:
            break
        sources.append(source)
        chunks += len(drafts)
    rows = [
        document_row(owner, kb_id, f"{source}.md", f"sample {source}".encode(), "ready")
        for source in sources
    ]
    await insert_documents(shape.db, rows)
    written = 0
    for row, source in zip(rows, sources, strict=True):
        async with shape.db.session() as session:
            written += await index.write_document(
                session,
                tenant_id=owner.tenant_id,
                kb_id=kb_id,
                document_id=row["id"],
                drafts=ingested.drafts[source],
                vectors=ingested.vectors.get(source),
            )
            await session.commit()
    return written


async def time_searches(
    index: KnowledgeIndex,
    owner: Owner,
    kb_id: str,
    queries: Sequence[str],
    options: KnowledgeOptions,
) -> dict[str, Any]:
    """The first search (cold), `warmup` more, then `rounds` passes over the queries, one at
    a time, until done or `max_cell_s`."""
    modes: set[str] = set()

    async def search(query: str) -> float:
        started = time.perf_counter()
        result = await index.search(
            tenant_id=owner.tenant_id, kb_ids=[kb_id], query=query, top_k=options.top_k
        )
        elapsed = time.perf_counter() - started
        modes.add(result.mode)
        return elapsed

    first_s = await search(queries[0])
    for query in itertools.islice(itertools.cycle(queries[1:] or queries), options.warmup):
        await search(query)
    samples: list[float] = []
    cpu_before = time.process_time()
    system_before = system_cpu()
    started = time.perf_counter()
    capped = False
    for query in itertools.chain.from_iterable(itertools.repeat(queries, options.rounds)):
        samples.append(await search(query))
        if time.perf_counter() - started > options.max_cell_s:
            capped = len(samples) < options.rounds * len(queries)
            break
    elapsed = time.perf_counter() - started
    cpu_s = time.process_time() - cpu_before
    return {
        "searches": len(samples),
        "ms": distribution_ms(samples),
        "first_ms": round(first_s * 1000, 3),
        "searches_per_s": round(len(samples) / elapsed, 1) if elapsed else None,
        "bench_cpu_ms_per_search": round(cpu_s * 1000 / len(samples), 3) if samples else None,
        "index_mode": sorted(modes),
        "time_capped": capped,
        "machine_cpu": machine_cpu(system_before, elapsed),
    }


async def query_embedding_ms(embedder: Embedder, queries: Sequence[str]) -> dict[str, float]:
    """What embedding the query alone costs (part of every hybrid search)."""
    samples = []
    for query in queries:
        started = time.perf_counter()
        await embedder.embed_query(query)
        samples.append(time.perf_counter() - started)
    return distribution_ms(samples)


async def vector_parts(
    index: KnowledgeIndex,
    embedder: Embedder,
    owner: Owner,
    kb_id: str,
    queries: Sequence[str],
    top_k: int,
) -> dict[str, Any]:
    """The vector half of a hybrid search on its own, with the queries embedded beforehand:
    the index's search (binary codes and exact rescoring from BINARY_MIN_ROWS rows, else
    exact) against an exact product over the same matrix, and how much of the exact list
    the index's list holds (`recall`, over the `pool` candidates hybrid fuses)."""
    import numpy as np
    from sqlalchemy import select

    from chatplane.knowledge.index import CANDIDATES_PER_RESULT, MIN_CANDIDATES
    from chatplane.knowledge.models import KnowledgeBase

    pool = max(top_k * CANDIDATES_PER_RESULT, MIN_CANDIDATES)
    async with index.db.session() as session:
        version = await session.scalar(
            select(KnowledgeBase.updated_at).where(KnowledgeBase.id == kb_id)
        )
        matrix = await index.vectors.matrix(
            session, tenant_id=owner.tenant_id, kb_id=kb_id, model=embedder.model, version=version
        )
    vectors = [await embedder.embed_query(query) for query in queries]
    indexed, exact, recalls = [], [], []
    for vector in vectors:
        started = time.perf_counter()
        found = await index.vectors.search([matrix], vector, pool)
        indexed.append(time.perf_counter() - started)
        started = time.perf_counter()
        scores = matrix.matrix @ vector
        best = np.argpartition(-scores, pool - 1)[:pool] if pool < len(scores) else None
        exact.append(time.perf_counter() - started)
        truth = set(matrix.chunk_ids.tolist() if best is None else matrix.chunk_ids[best].tolist())
        recalls.append(len(truth & {chunk_id for chunk_id, _ in found}) / max(1, len(truth)))
    return {
        "rows": len(matrix.chunk_ids),
        "binary_codes": matrix.codes is not None,
        "pool": pool,
        "search_ms": distribution_ms(indexed),
        "exact_ms": distribution_ms(exact),
        "recall": round(float(np.mean(recalls)), 4) if recalls else None,
        "recall_min": round(float(np.min(recalls)), 4) if recalls else None,
    }


async def measure_latency(
    shape: ShapeDatabase,
    owner: Owner,
    embedder: Embedder | None,
    ingested: Ingested,
    queries: Sequence[str],
    options: KnowledgeOptions,
) -> dict[str, Any]:
    from chatplane.knowledge.index import KnowledgeIndex

    model = embedder.model if embedder is not None else None
    kb_id = await create_knowledge_base(shape.db, owner, "latency", model)
    writer = KnowledgeIndex(shape.db, embedder)
    total = await write_sample(
        shape, writer, owner, kb_id, ingested, options.sample_documents, min(options.sizes)
    )
    sample_chunks = total
    texts = [
        (draft.heading, draft.text, draft.tokens, _vector_of(ingested, source, row))
        for source, drafts in ingested.drafts.items()
        for row, draft in enumerate(drafts)
    ]
    filler = Filler(shape, owner, kb_id, texts, embedder)
    sizes: dict[str, Any] = {}
    for size in sorted(options.sizes):
        fill_s = await filler.add(size - total) if size > total else 0.0
        total = max(total, size)
        # Fresh indexes per size: nothing cached from the smaller size survives.
        indexes = {LEXICAL: KnowledgeIndex(shape.db, None)}
        if embedder is not None:
            indexes[HYBRID] = KnowledgeIndex(shape.db, embedder)
        cell: dict[str, Any] = {
            "chunks": total,
            "fill_s": round(fill_s, 3),
            "database_mb": await shape.size_mb(),
        }
        for mode, index in indexes.items():
            cell[mode] = await time_searches(index, owner, kb_id, queries, options)
        if embedder is not None:
            cell[HYBRID]["vector"] = await vector_parts(
                indexes[HYBRID], embedder, owner, kb_id, queries, options.top_k
            )
        else:
            cell[HYBRID] = {"skipped": "no embedder"}
        sizes[str(size)] = cell
    return {"sample_chunks": sample_chunks, "sizes": sizes}


def _vector_of(ingested: Ingested, source: str, row: int) -> npt.NDArray[np.float32] | None:
    """The real vector of a docstring's chunk, when the ingestion embedded it."""
    embedded = ingested.vectors.get(source)
    return None if embedded is None else embedded.vectors[row]


# The scenario ----------------------------------------------------------------------------
