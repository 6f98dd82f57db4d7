"""Quality: recall@5 and nDCG@10 of lexical, vector and hybrid retrieval."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from bench.knowledge.common import (
    HYBRID,
    LEXICAL,
    NDCG_K,
    QUALITY_MODES,
    QUALITY_TOP_K,
    RECALL_K,
    VECTOR,
)
from bench.knowledge.corpus import Judgements, distinct, ndcg_at_k, recall_at_k
from bench.knowledge.stores import Owner

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from chatplane.db.engine import Database
    from chatplane.knowledge.embedders import Embedder


# Quality ---------------------------------------------------------------------------------


async def stored_vectors(
    db: Database, kb_id: str, model: str
) -> tuple[list[str], npt.NDArray[np.float32]]:
    """Every vector of the knowledge base for `model` with its chunk's document id."""
    import numpy as np
    from sqlalchemy import select

    from chatplane.knowledge.models import Chunk, ChunkVector

    async with db.session() as session:
        rows = (
            await session.execute(
                select(Chunk.document_id, ChunkVector.vector)
                .join(Chunk, Chunk.id == ChunkVector.chunk_id)
                .where(ChunkVector.kb_id == kb_id, ChunkVector.model == model)
                .order_by(ChunkVector.chunk_id)
            )
        ).all()
    documents = [row[0] for row in rows]
    matrix = np.frombuffer(b"".join(row[1] for row in rows), dtype="<f4")
    return documents, matrix.reshape(len(rows), -1).astype(np.float32)


async def measure_quality(
    db: Database,
    embedder: Embedder | None,
    owner: Owner,
    kb_id: str,
    source_of: Mapping[str, str],
    judgements: Judgements,
) -> dict[str, Any]:
    """recall@5 and nDCG@10 of each mode, averaged over the queries (and per query)."""
    from chatplane.knowledge.index import KnowledgeIndex

    rankings: dict[str, dict[str, list[str]]] = {mode: {} for mode in QUALITY_MODES}
    reported_modes: dict[str, set[str]] = {LEXICAL: set(), HYBRID: set()}
    indexes = {LEXICAL: KnowledgeIndex(db, None)}
    if embedder is not None:
        indexes[HYBRID] = KnowledgeIndex(db, embedder)
        vector_documents, matrix = await stored_vectors(db, kb_id, embedder.model)
    for query in judgements.queries:
        for mode, index in indexes.items():
            result = await index.search(
                tenant_id=owner.tenant_id, kb_ids=[kb_id], query=query.text, top_k=QUALITY_TOP_K
            )
            reported_modes[mode].add(result.mode)
            rankings[mode][query.id] = distinct(
                source_of[p.document_id] for p in result.passages if p.document_id in source_of
            )
        if embedder is not None:
            [vector] = await embedder.embed([query.text])
            order = (matrix @ vector).argsort()[::-1][:QUALITY_TOP_K]
            rankings[VECTOR][query.id] = distinct(
                source_of[vector_documents[i]] for i in order if vector_documents[i] in source_of
            )
    result_modes: dict[str, Any] = {}
    for mode in QUALITY_MODES:
        if not rankings[mode]:
            result_modes[mode] = {"skipped": "no embedder"}
            continue
        recalls, ndcgs, empty = [], [], 0
        per_query: dict[str, list[float]] = {}
        for query in judgements.queries:
            ranked = rankings[mode][query.id]
            empty += not ranked
            recall = recall_at_k(ranked, query.relevant, RECALL_K)
            ndcg = ndcg_at_k(ranked, query.relevant, NDCG_K)
            recalls.append(recall)
            ndcgs.append(ndcg)
            per_query[query.id] = [round(recall, 4), round(ndcg, 4)]
        result_modes[mode] = {
            f"recall@{RECALL_K}": round(sum(recalls) / len(recalls), 4),
            f"ndcg@{NDCG_K}": round(sum(ndcgs) / len(ndcgs), 4),
            "queries": len(recalls),
            "queries_without_results": empty,
            "index_mode": sorted(reported_modes.get(mode, set())) or None,
            "per_query": per_query,
        }
    return result_modes


# Latency ---------------------------------------------------------------------------------
