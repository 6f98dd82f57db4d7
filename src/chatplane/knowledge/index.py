"""The retrieval index of the knowledge bases: chunks in, ranked passages out.

- Lexical: FTS5 (SQLite) or the `tsv` column (Postgres), see `knowledge.lexical`.
- Vectors: an exact in-process index over `kb_vectors`, see `knowledge.vectors`.
- Hybrid: weighted reciprocal rank fusion of both lists, when an embedder is configured and the
  knowledge base's `embedding_model` is the embedder's model. A query never mixes models:
  a knowledge base whose vectors come from another model answers lexically until
  `reindex` has embedded it again and switched it in one update.

Rules for the callers:
- A knowledge base created while an embedder is configured gets
  `embedding_model = embedder.model` at creation (it has nothing to re-index yet).
- Chunks and vectors are written only through this class (`write_document`,
  `delete_document`, `reindex`): each bumps `knowledge_bases.updated_at` in the same
  transaction, which is how every process notices that its cached vectors are stale.
  Deleting a whole knowledge base removes its row, which is as good.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Literal, Protocol, cast

import structlog
from sqlalchemy import Select, Table, delete, insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from chatplane.db.base import utcnow
from chatplane.db.engine import Database
from chatplane.errors import ChatplaneError, NotFound
from chatplane.knowledge.embedders import Embedder, EmbeddingsUnavailable
from chatplane.knowledge.lexical import (
    LexicalHit,
    has_words,
    lexical_search,
    query_terms,
    refresh_statistics,
)
from chatplane.knowledge.models import Chunk, ChunkVector, KnowledgeBase

if TYPE_CHECKING:  # numpy and the vector index load with the first embedder
    from chatplane.knowledge.embedders import Vectors
    from chatplane.knowledge.vectors import KbMatrix, VectorIndex

log = structlog.get_logger("chatplane.knowledge")

CHUNKS = cast(Table, Chunk.__table__)
VECTORS = cast(Table, ChunkVector.__table__)
KNOWLEDGE_BASES = cast(Table, KnowledgeBase.__table__)

# The vector list fused in hybrid mode holds this many candidates per wanted result.
CANDIDATES_PER_RESULT = 4
MIN_CANDIDATES = 20
# Weighted reciprocal rank fusion: the vector list counts more than the lexical one, and
# only the lexical list's first LEXICAL_FUSION_DEPTH hits take part (its precision falls
# quickly after them). Chosen on the judged docstring queries of `bench/knowledge.py` from a
# coarse grid, by two-fold cross-validation and the flat middle of the good region, the same
# values on both shapes; see "Retrieval" in docs/knowledge.md.
FUSION_K = 10
VECTOR_WEIGHT = 1.0
LEXICAL_WEIGHT = 0.5
LEXICAL_FUSION_DEPTH = 20
# Texts per call to the embedder while indexing (progress is reported between calls), and
# chunks per committed batch while re-indexing.
EMBED_SLICE = 256
REINDEX_BATCH = 256
REINDEX_MAX_PASSES = 5
# The part of a query that is embedded; a query is a question, not a document.
MAX_QUERY_EMBED_CHARS = 4000

Mode = Literal["lexical", "hybrid"]
Progress = Callable[[int, int], Awaitable[None]]


class ChunkDraftLike(Protocol):
    """What the index reads of `chatplane.knowledge.chunking.ChunkDraft`."""

    @property
    def ord(self) -> int: ...
    @property
    def text(self) -> str: ...
    @property
    def heading(self) -> str | None: ...
    @property
    def page(self) -> int | None: ...
    @property
    def tokens(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Passage:
    chunk_id: int
    document_id: str
    kb_id: str
    text: str
    heading: str | None
    page: int | None
    score: float  # higher is better: the fused score in hybrid mode, else the lexical rank


@dataclass(frozen=True, slots=True)
class SearchResult:
    mode: Mode
    passages: list[Passage]


@dataclass(frozen=True, slots=True)
class EmbeddedChunks:
    """The vectors of a document's drafts, row i for draft i (float32, unit rows)."""

    model: str
    vectors: Vectors


def embedding_text(text: str, heading: str | None) -> str:
    """What is embedded for a chunk: its heading path, then its text."""
    return f"{heading}\n\n{text}" if heading else text


class KnowledgeIndex:
    def __init__(
        self,
        db: Database,
        embedder: Embedder | None,
        *,
        vectors: VectorIndex | None = None,
    ) -> None:
        self.db = db
        self.embedder = embedder
        self._vectors = vectors
        self.dialect = db.engine.dialect.name

    @property
    def vectors(self) -> VectorIndex:
        """The in-process vector index, made on first use (only hybrid search and
        re-indexing use it: a process without an embedder never loads numpy)."""
        if self._vectors is None:
            from chatplane.knowledge.vectors import VectorIndex

            self._vectors = VectorIndex()
        return self._vectors

    # Writing.

    async def embed(
        self, drafts: Sequence[ChunkDraftLike], *, progress: Progress | None = None
    ) -> EmbeddedChunks | None:
        """The drafts' vectors from the configured embedder (None without one). Raises
        `EmbeddingFailed`. `progress(done, total)` is awaited after each slice."""
        if self.embedder is None:
            return None
        texts = [embedding_text(d.text, d.heading) for d in drafts]
        parts: list[Vectors] = []
        for start in range(0, len(texts), EMBED_SLICE):
            parts.append(await self.embedder.embed(texts[start : start + EMBED_SLICE]))
            if progress is not None:
                await progress(min(start + EMBED_SLICE, len(texts)), len(texts))
        import numpy as np

        dim = self.embedder.dim or 0
        matrix = np.concatenate(parts) if parts else np.zeros((0, dim), np.float32)
        return EmbeddedChunks(self.embedder.model, matrix)

    async def write_document(
        self,
        session: AsyncSession,
        *,
        tenant_id: str,
        kb_id: str,
        document_id: str,
        drafts: Sequence[ChunkDraftLike],
        vectors: EmbeddedChunks | None,
    ) -> int:
        """Replace every chunk (and vector) of the document, in the caller's transaction
        (never committed here). Returns the number of chunks written."""
        if vectors is not None and len(vectors.vectors) != len(drafts):
            raise ValueError(f"{len(vectors.vectors)} vectors for {len(drafts)} chunks")
        await self._delete_chunks(session, document_id)
        await _touch(session, kb_id)
        if not drafts:
            return 0
        rows = [
            {
                "tenant_id": tenant_id,
                "kb_id": kb_id,
                "document_id": document_id,
                "ord": draft.ord,
                "text": draft.text,
                "heading": draft.heading,
                "page": draft.page,
                "tokens": draft.tokens,
            }
            for draft in drafts
        ]
        inserted = await session.execute(
            insert(CHUNKS).returning(CHUNKS.c.id, sort_by_parameter_order=True), rows
        )
        chunk_ids = list(inserted.scalars())
        if vectors is not None and chunk_ids:
            await _insert_vectors(session, chunk_ids, vectors, tenant_id=tenant_id, kb_id=kb_id)
        return len(chunk_ids)

    async def refresh_statistics(self) -> None:
        """After chunks were written: keep the lexical search's statistics fresh (Postgres).
        Best effort: the chunks are committed already, and autovacuum catches up anyway."""
        try:
            async with self.db.session() as session:
                if await refresh_statistics(session, self.db.engine.dialect.name):
                    log.info("kb_statistics_refreshed")
        except (ChatplaneError, SQLAlchemyError) as exc:
            log.warning("kb_statistics_not_refreshed", error=str(exc))

    async def delete_document(self, session: AsyncSession, document_id: str) -> None:
        """Take the document's chunks and vectors out of the index (no commit)."""
        kb_of_document = select(CHUNKS.c.kb_id).where(CHUNKS.c.document_id == document_id)
        await session.execute(
            update(KNOWLEDGE_BASES)
            .where(KNOWLEDGE_BASES.c.id.in_(kb_of_document))
            .values(updated_at=utcnow())
        )
        await self._delete_chunks(session, document_id)

    async def _delete_chunks(self, session: AsyncSession, document_id: str) -> None:
        chunk_ids = select(CHUNKS.c.id).where(CHUNKS.c.document_id == document_id)
        await session.execute(delete(VECTORS).where(VECTORS.c.chunk_id.in_(chunk_ids)))
        await session.execute(delete(CHUNKS).where(CHUNKS.c.document_id == document_id))

    # Reading.

    async def search(
        self,
        *,
        tenant_id: str,
        kb_ids: Sequence[str],
        query: str,
        top_k: int,
        document_ids: Sequence[str] | None = None,
    ) -> SearchResult:
        """The best `top_k` passages of the tenant's knowledge bases `kb_ids` (optionally
        only of `document_ids`); every filter runs inside the queries."""
        kb_ids = list(dict.fromkeys(kb_ids))
        if document_ids is not None:
            document_ids = list(dict.fromkeys(document_ids))
        async with self.db.session() as session:
            vector_kbs = await self._vector_kbs(session, tenant_id, kb_ids)
            mode: Mode = "hybrid" if vector_kbs else "lexical"
            if top_k <= 0 or not has_words(query):
                return SearchResult(mode, [])
            lexical = partial(
                lexical_search,
                session,
                dialect=self.dialect,
                tenant_id=tenant_id,
                kb_ids=kb_ids,
                terms=query_terms(query),
                document_ids=document_ids,
            )
            if not vector_kbs:
                hits = await lexical(limit=top_k)
                return SearchResult("lexical", [_passage(hit, hit.score) for hit in hits])
            return await self._hybrid(
                session, tenant_id, vector_kbs, query, lexical, top_k, document_ids
            )

    async def _vector_kbs(
        self, session: AsyncSession, tenant_id: str, kb_ids: list[str]
    ) -> list[tuple[str, object]]:
        """(kb id, version) of the knowledge bases whose vectors are the embedder's."""
        if self.embedder is None or not kb_ids:
            return []
        rows = await session.execute(
            select(KNOWLEDGE_BASES.c.id, KNOWLEDGE_BASES.c.updated_at).where(
                KNOWLEDGE_BASES.c.tenant_id == tenant_id,
                KNOWLEDGE_BASES.c.id.in_(kb_ids),
                KNOWLEDGE_BASES.c.embedding_model == self.embedder.model,
            )
        )
        return [(kb_id, version) for kb_id, version in rows.all()]

    async def _hybrid(
        self,
        session: AsyncSession,
        tenant_id: str,
        vector_kbs: list[tuple[str, object]],
        query: str,
        lexical: Callable[..., Awaitable[list[LexicalHit]]],
        top_k: int,
        document_ids: Sequence[str] | None,
    ) -> SearchResult:
        assert self.embedder is not None
        pool = max(top_k * CANDIDATES_PER_RESULT, MIN_CANDIDATES)
        # The query's embedding starts first; the vector search follows it on its own,
        # while this task runs the lexical search (the session is used by one at a time:
        # the matrices are read before the lexical search starts).
        embedding = asyncio.create_task(self._embed_query(query))
        nearest_task: asyncio.Task[list[tuple[int, float]] | None] | None = None
        try:
            matrices: list[KbMatrix] = []
            for kb_id, version in vector_kbs:
                matrices.append(
                    await self.vectors.matrix(
                        session,
                        tenant_id=tenant_id,
                        kb_id=kb_id,
                        model=self.embedder.model,
                        version=version,
                    )
                )
            nearest_task = asyncio.create_task(
                self._nearest(embedding, matrices, pool, document_ids)
            )
            # All of it if the embedder fails.
            hits = await lexical(limit=max(top_k, LEXICAL_FUSION_DEPTH))
            nearest = await nearest_task
        finally:
            embedding.cancel()
            if nearest_task is not None:
                nearest_task.cancel()
        if nearest is None:  # the embedder failed: answer lexically rather than not
            return SearchResult("lexical", [_passage(hit, hit.score) for hit in hits[:top_k]])
        from chatplane.knowledge.vectors import reciprocal_rank_fusion

        fused = reciprocal_rank_fusion(
            [
                [hit.chunk_id for hit in hits[:LEXICAL_FUSION_DEPTH]],
                [chunk_id for chunk_id, _ in nearest],
            ],
            k=FUSION_K,
            weights=[LEXICAL_WEIGHT, VECTOR_WEIGHT],
        )[:top_k]
        known = {hit.chunk_id: hit for hit in hits}
        missing = [chunk_id for chunk_id, _ in fused if chunk_id not in known]
        if missing:
            known.update(await _chunks_by_id(session, tenant_id, missing))
        passages = [_passage(known[cid], score) for cid, score in fused if cid in known]
        return SearchResult("hybrid", passages)

    async def _embed_query(self, query: str) -> Vectors | None:
        assert self.embedder is not None
        try:
            return await self.embedder.embed_query(query[:MAX_QUERY_EMBED_CHARS])
        except ChatplaneError as exc:
            log.warning("kb_query_embedding_failed", code=exc.code, detail=exc.detail)
            return None

    async def _nearest(
        self,
        embedding: asyncio.Task[Vectors | None],
        matrices: Sequence[KbMatrix],
        pool: int,
        document_ids: Sequence[str] | None,
    ) -> list[tuple[int, float]] | None:
        """The vector list once the query is embedded; None when embedding failed."""
        query_vector = await embedding
        if query_vector is None:
            return None
        return await self.vectors.search(matrices, query_vector, pool, document_ids)

    # Re-indexing.

    async def reindex(self, kb_id: str) -> int:
        """Embed every chunk of the knowledge base that has no vector of the embedder's
        model (committing batch by batch), then switch the knowledge base to that model and
        drop the other models' vectors in one transaction. Until the switch, queries keep
        using the old model (or none). Returns the number of chunks embedded."""
        embedder = self.embedder
        if embedder is None:
            raise EmbeddingsUnavailable("No embedder is configured (CHATPLANE_EMBEDDINGS)")
        embedded = 0
        for _ in range(REINDEX_MAX_PASSES):
            done, complete = await self._embed_missing(kb_id, embedder)
            embedded += done
            if complete and await self._switch(kb_id, embedder.model):
                self.vectors.forget(kb_id)
                return embedded
        raise ChatplaneError(f"Knowledge base {kb_id} kept changing while it was re-indexed")

    async def _embed_missing(self, kb_id: str, embedder: Embedder) -> tuple[int, bool]:
        """One pass over the chunks without a vector of the model, in id order."""
        embedded, after, conflicts = 0, 0, 0
        while True:
            async with self.db.session() as session:
                batch = (await session.execute(_missing(kb_id, embedder.model, after))).all()
                if not batch:
                    return embedded, conflicts == 0
                texts = [embedding_text(text, heading) for _, _, text, heading in batch]
                vectors = EmbeddedChunks(embedder.model, await embedder.embed(texts))
                try:
                    await _insert_vectors(
                        session,
                        [row[0] for row in batch],
                        vectors,
                        tenant_id=batch[0][1],
                        kb_id=kb_id,
                        if_absent=True,
                    )
                    await session.commit()
                except IntegrityError:  # a chunk was deleted meanwhile: next pass
                    await session.rollback()
                    conflicts += 1
                else:
                    embedded += len(batch)
                after = batch[-1][0]

    async def _switch(self, kb_id: str, model: str) -> bool:
        """Point the knowledge base at `model` and drop other models' vectors, when no
        chunk lacks a vector of `model`; False (nothing changed) otherwise."""
        async with self.db.session() as session:
            found = await session.scalar(
                select(KNOWLEDGE_BASES.c.id).where(KNOWLEDGE_BASES.c.id == kb_id)
            )
            if found is None:
                raise NotFound(f"Knowledge base {kb_id} was not found")
            if (await session.execute(_missing(kb_id, model, 0).limit(1))).first():
                return False
            await session.execute(
                update(KNOWLEDGE_BASES)
                .where(KNOWLEDGE_BASES.c.id == kb_id)
                .values(embedding_model=model, updated_at=utcnow())
            )
            await session.execute(
                delete(VECTORS).where(VECTORS.c.kb_id == kb_id, VECTORS.c.model != model)
            )
            await session.commit()
        return True


def _missing(kb_id: str, model: str, after: int) -> Select[int, str, str, str | None]:
    """Chunks of the knowledge base after id `after` that have no vector of `model`."""
    has_vector = select(VECTORS.c.chunk_id).where(
        VECTORS.c.chunk_id == CHUNKS.c.id, VECTORS.c.model == model
    )
    return (
        select(CHUNKS.c.id, CHUNKS.c.tenant_id, CHUNKS.c.text, CHUNKS.c.heading)
        .where(CHUNKS.c.kb_id == kb_id, CHUNKS.c.id > after, ~has_vector.exists())
        .order_by(CHUNKS.c.id)
        .limit(REINDEX_BATCH)
    )


async def _touch(session: AsyncSession, kb_id: str) -> None:
    await session.execute(
        update(KNOWLEDGE_BASES).where(KNOWLEDGE_BASES.c.id == kb_id).values(updated_at=utcnow())
    )


async def _insert_vectors(
    session: AsyncSession,
    chunk_ids: Sequence[int],
    vectors: EmbeddedChunks,
    *,
    tenant_id: str,
    kb_id: str,
    if_absent: bool = False,
) -> None:
    """Insert the vectors; with `if_absent`, skip chunks that have one of this model."""
    import numpy as np

    matrix = np.ascontiguousarray(vectors.vectors, dtype="<f4")
    dim = int(matrix.shape[1])
    rows = [
        {
            "chunk_id": chunk_id,
            "model": vectors.model,
            "tenant_id": tenant_id,
            "kb_id": kb_id,
            "dim": dim,
            "vector": row.tobytes(),
        }
        for chunk_id, row in zip(chunk_ids, matrix, strict=True)
    ]
    if not if_absent:
        await session.execute(insert(VECTORS), rows)
    elif session.get_bind().dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        await session.execute(sqlite_insert(VECTORS).on_conflict_do_nothing(), rows)
    else:
        # The dialect's own module, only on its database (the embedded shape never loads
        # the Postgres one).
        from sqlalchemy.dialects.postgresql import insert as postgresql_insert

        await session.execute(postgresql_insert(VECTORS).on_conflict_do_nothing(), rows)


async def _chunks_by_id(
    session: AsyncSession, tenant_id: str, chunk_ids: Sequence[int]
) -> dict[int, LexicalHit]:
    rows = await session.execute(
        select(
            CHUNKS.c.id,
            CHUNKS.c.document_id,
            CHUNKS.c.kb_id,
            CHUNKS.c.text,
            CHUNKS.c.heading,
            CHUNKS.c.page,
        ).where(CHUNKS.c.id.in_(chunk_ids), CHUNKS.c.tenant_id == tenant_id)
    )
    return {row[0]: LexicalHit(*row, score=0.0) for row in rows.all()}


def _passage(hit: LexicalHit, score: float) -> Passage:
    return Passage(
        chunk_id=hit.chunk_id,
        document_id=hit.document_id,
        kb_id=hit.kb_id,
        text=hit.text,
        heading=hit.heading,
        page=hit.page,
        score=score,
    )
