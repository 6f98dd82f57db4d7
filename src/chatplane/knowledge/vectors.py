"""Vector retrieval: an exact, in-process index over `kb_vectors`, and rank fusion.

Why in-process: this machine's Python `sqlite3` cannot load extensions (no sqlite-vec) and
its Postgres has no pgvector package, and both shapes must run here. So each process keeps,
per (tenant, knowledge base, model), one float32 matrix of the knowledge base's unit
vectors, loaded from `kb_vectors` (filtered by tenant, knowledge base and model in the SQL)
and searched exactly: one matrix-vector product and an `argpartition`. At 100k chunks of
384 dimensions that is ~150 MB and a few milliseconds; the matrices share an LRU budget.

Freshness: a matrix is valid for one value of `knowledge_bases.updated_at`, which search
reads anyway (with `embedding_model`) before touching vectors. Every writer of chunks and
vectors (`KnowledgeIndex.write_document`, `delete_document`, `reindex`) bumps that column in
its own transaction, so a process sees a changed knowledge base on its next search and
reloads it: a deleted document leaves the results at once, in every process. (A row count
or `max(chunk_id)` would not do: a delete and an insert can leave both unchanged, and
counting 100k index entries costs more than the search.) Deleting a whole knowledge base removes
its row, so it stops matching at once too.

A reload after a change is incremental: one statement reads the ids and documents of every
vector row and the vectors of the rows newer than the cached matrix; rows that left (deleted
documents) are dropped by mask, new rows appended. This relies on chunk ids never being
reused (`AUTOINCREMENT` on SQLite, a sequence on Postgres) and on a chunk's vector of a
model never changing (rows are only inserted and deleted), so a cached row whose id still
exists is still right. Anything else (an older id that gained a vector, e.g. a re-index pass,
or a different dimension) falls back to a full load.

Where the `vector` extension exists, pgvector is the better choice for the scaled shape:
a `vector(dim)` column with an HNSW index (`vector_cosine_ops`), searched with `ORDER BY
embedding <=> :query LIMIT k` under the same tenant / knowledge base / document filters;
no per-process memory and no reloads. The contract of `VectorIndex.search` stays the same.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import numpy.typing as npt
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

DEFAULT_CACHE_BYTES = 1 << 30
# Reciprocal rank fusion's constant (Cormack et al.): score = sum of 1 / (k + rank).
RRF_K = 60
# Below this many matrix cells the product runs inline; above, in a worker thread (numpy
# releases the GIL), so a big knowledge base never stalls the event loop.
INLINE_CELLS = 1 << 20

_LOAD = text(
    """SELECT v.chunk_id, c.document_id, v.vector
    FROM kb_vectors AS v JOIN kb_chunks AS c ON c.id = v.chunk_id
    WHERE v.tenant_id = :tenant_id AND v.kb_id = :kb_id AND v.model = :model
      AND c.tenant_id = :tenant_id
    ORDER BY v.chunk_id"""
)


# The refresh: every row's id and document; the vector only of rows after `:after`.
_REFRESH = text(
    """SELECT v.chunk_id, c.document_id, CASE WHEN v.chunk_id > :after THEN v.vector END
    FROM kb_vectors AS v JOIN kb_chunks AS c ON c.id = v.chunk_id
    WHERE v.tenant_id = :tenant_id AND v.kb_id = :kb_id AND v.model = :model
      AND c.tenant_id = :tenant_id
    ORDER BY v.chunk_id"""
)


@dataclass(frozen=True, slots=True)
class KbMatrix:
    """One knowledge base's vectors of one model, as of `version`."""

    version: Hashable
    chunk_ids: npt.NDArray[np.int64]
    document_codes: npt.NDArray[np.int32]  # row -> index into `documents`
    documents: dict[str, int]  # document id -> code
    matrix: npt.NDArray[np.float32]  # (rows, dim), unit rows

    @property
    def nbytes(self) -> int:
        return int(self.matrix.nbytes + self.chunk_ids.nbytes + self.document_codes.nbytes)

    def top(
        self, query: npt.NDArray[np.float32], k: int, document_ids: Sequence[str] | None
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """The ids and cosine scores of the best `k` rows (of the given documents)."""
        empty = (np.empty(0, np.int64), np.empty(0, np.float32))
        if len(self.chunk_ids) == 0 or k <= 0 or self.matrix.shape[1] != query.shape[0]:
            return empty
        scores = self.matrix @ query
        if document_ids is not None:
            codes = [self.documents[d] for d in document_ids if d in self.documents]
            if not codes:
                return empty
            scores[~np.isin(self.document_codes, codes)] = -np.inf
        best = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
        best = best[np.argsort(-scores[best], kind="stable")]
        best = best[np.isfinite(scores[best])]
        return self.chunk_ids[best], scores[best]


class VectorIndex:
    """The matrices of this process, loaded on demand and dropped least recently used."""

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._matrices: OrderedDict[tuple[str, str, str], KbMatrix] = OrderedDict()
        self._loading: dict[tuple[str, str, str], asyncio.Lock] = {}
        self.loads = 0  # matrices read whole from the database, for tests and metrics
        self.refreshes = 0  # matrices brought up to date incrementally

    async def matrix(
        self,
        session: AsyncSession,
        *,
        tenant_id: str,
        kb_id: str,
        model: str,
        version: Hashable,
    ) -> KbMatrix:
        """The knowledge base's matrix as of `version`, read from the database when the
        cached one is older (one load at a time per knowledge base)."""
        key = (tenant_id, kb_id, model)
        cached = self._matrices.get(key)
        if cached is not None and cached.version == version:
            self._matrices.move_to_end(key)
            return cached
        lock = self._loading.setdefault(key, asyncio.Lock())
        async with lock:
            cached = self._matrices.get(key)
            if cached is not None and cached.version == version:
                return cached
            loaded = None
            if cached is not None and len(cached.chunk_ids):
                loaded = await self._refresh(session, key, version, cached)
            if loaded is None:
                loaded = await self._load(session, key, version)
            self._matrices.pop(key, None)
            self._matrices[key] = loaded
            self._evict()
        return loaded

    def forget(self, kb_id: str) -> None:
        for key in [key for key in self._matrices if key[1] == kb_id]:
            del self._matrices[key]

    async def search(
        self,
        matrices: Sequence[KbMatrix],
        query: npt.NDArray[np.float32],
        k: int,
        document_ids: Sequence[str] | None = None,
    ) -> list[tuple[int, float]]:
        """(chunk id, cosine) of the best `k` rows over the matrices, best first."""
        cells = sum(m.matrix.size for m in matrices)
        if cells > INLINE_CELLS:
            return await asyncio.to_thread(_top_of, matrices, query, k, document_ids)
        return _top_of(matrices, query, k, document_ids)

    async def _load(
        self, session: AsyncSession, key: tuple[str, str, str], version: Hashable
    ) -> KbMatrix:
        tenant_id, kb_id, model = key
        result = await session.execute(
            _LOAD, {"tenant_id": tenant_id, "kb_id": kb_id, "model": model}
        )
        rows = result.all()
        self.loads += 1
        return await asyncio.to_thread(_build, rows, version)

    async def _refresh(
        self, session: AsyncSession, key: tuple[str, str, str], version: Hashable, cached: KbMatrix
    ) -> KbMatrix | None:
        """`cached` brought to `version` with one statement, or None when it cannot be."""
        tenant_id, kb_id, model = key
        after = int(cached.chunk_ids[-1])
        result = await session.execute(
            _REFRESH, {"tenant_id": tenant_id, "kb_id": kb_id, "model": model, "after": after}
        )
        rows = result.all()
        refreshed = await asyncio.to_thread(_refreshed, cached, rows, version)
        if refreshed is not None:
            self.refreshes += 1
        return refreshed

    def _evict(self) -> None:
        total = sum(m.nbytes for m in self._matrices.values())
        while total > self.max_bytes and len(self._matrices) > 1:
            _, dropped = self._matrices.popitem(last=False)
            total -= dropped.nbytes


def _build(rows: Sequence[tuple[int, str, bytes]], version: Hashable) -> KbMatrix:
    if not rows:
        return KbMatrix(
            version,
            np.empty(0, np.int64),
            np.empty(0, np.int32),
            {},
            np.empty((0, 0), np.float32),
        )
    chunk_ids = np.fromiter((row[0] for row in rows), dtype=np.int64, count=len(rows))
    names, codes = np.unique(np.array([row[1] for row in rows], dtype=object), return_inverse=True)
    blob = b"".join(row[2] for row in rows)
    dim = len(rows[0][2]) // 4
    if dim == 0 or len(blob) != dim * 4 * len(rows):
        raise ValueError("kb_vectors rows of one model have different dimensions")
    matrix = np.frombuffer(blob, dtype="<f4").reshape(len(rows), dim).astype(np.float32)
    documents = {str(name): code for code, name in enumerate(names.tolist())}
    return KbMatrix(version, chunk_ids, codes.astype(np.int32), documents, matrix)


def _refreshed(
    cached: KbMatrix, rows: Sequence[tuple[int, str, bytes | None]], version: Hashable
) -> KbMatrix | None:
    """The cached matrix without the rows that left and with the rows after it appended;
    None when a row at or below its last id is new to it."""
    if not rows:
        return _build([], version)
    chunk_ids = np.fromiter((row[0] for row in rows), dtype=np.int64, count=len(rows))
    after = int(cached.chunk_ids[-1])
    old = chunk_ids <= after
    positions = np.searchsorted(cached.chunk_ids, chunk_ids[old])
    positions = np.minimum(positions, len(cached.chunk_ids) - 1)
    if not np.array_equal(cached.chunk_ids[positions], chunk_ids[old]):
        return None  # an older chunk gained a vector of this model (a re-index pass)
    dim = cached.matrix.shape[1]
    new_blobs = [row[2] for row in rows if row[0] > after]
    if any(blob is None or len(blob) != dim * 4 for blob in new_blobs):
        return None
    matrix = np.empty((len(rows), dim), dtype=np.float32)
    matrix[old] = cached.matrix[positions]
    if new_blobs:
        fresh = np.frombuffer(b"".join(cast(bytes, b) for b in new_blobs), dtype="<f4")
        matrix[~old] = fresh.reshape(len(new_blobs), dim)
    names, codes = np.unique(np.array([row[1] for row in rows], dtype=object), return_inverse=True)
    documents = {str(name): code for code, name in enumerate(names.tolist())}
    return KbMatrix(version, chunk_ids, codes.astype(np.int32), documents, matrix)


def _top_of(
    matrices: Sequence[KbMatrix],
    query: npt.NDArray[np.float32],
    k: int,
    document_ids: Sequence[str] | None,
) -> list[tuple[int, float]]:
    parts = [m.top(query, k, document_ids) for m in matrices]
    ids = np.concatenate([p[0] for p in parts]) if parts else np.empty(0, np.int64)
    scores = np.concatenate([p[1] for p in parts]) if parts else np.empty(0, np.float32)
    order = np.argsort(-scores, kind="stable")[:k]
    return list(zip(ids[order].tolist(), scores[order].tolist(), strict=True))


def reciprocal_rank_fusion(
    rankings: Sequence[Sequence[int]],
    k: int = RRF_K,
    weights: Sequence[float] | None = None,
) -> list[tuple[int, float]]:
    """Fuse ranked id lists: score(id) = sum over lists of weight / (k + rank), rank from 1
    (every weight 1 by default). Best first; ties go to the id ranked best in any list,
    then the smaller id."""
    if weights is None:
        weights = [1.0] * len(rankings)
    if len(weights) != len(rankings):
        raise ValueError(f"{len(weights)} weights for {len(rankings)} rankings")
    scores: dict[int, float] = {}
    best_rank: dict[int, int] = {}
    for weight, ranking in zip(weights, rankings, strict=True):
        for rank, chunk_id in enumerate(ranking, start=1):
            scores[chunk_id] = scores.get(chunk_id, 0.0) + weight / (k + rank)
            best_rank[chunk_id] = min(best_rank.get(chunk_id, rank), rank)
    return sorted(scores.items(), key=lambda item: (-item[1], best_rank[item[0]], item[0]))
