"""Vector retrieval: an exact, in-process index over `kb_vectors`, and rank fusion.

Why in-process: this machine's Python `sqlite3` cannot load extensions (no sqlite-vec) and
its Postgres has no pgvector package, and both shapes must run here. So each process keeps,
per (tenant, knowledge base, model), one float32 matrix of the knowledge base's unit
vectors, loaded from `kb_vectors` (filtered by tenant, knowledge base and model in the SQL);
the matrices share an LRU budget.

Searching it: below `BINARY_MIN_ROWS` rows, exactly (one matrix-vector product and an
`argpartition`). At 100k rows of 384 dimensions that product reads 150 MB per query, 25 ms
on a quiet 2-core VM and far more when the memory bus is shared, so a big matrix also keeps
a binary code of every row: one bit per dimension, the sign of the row minus the matrix's
mean (centred, so the bits split the rows evenly instead of all agreeing). A search ranks
every row by the Hamming distance of its code to the query's (6 machine words per row at
384 dimensions: 4.8 MB at 100k), takes the nearest `rescored(k)` rows as candidates, and
ranks those by their exact cosine. The scores returned are always exact cosines; only
the candidate set is approximate, and it is large enough (`RESCORE_PER_RESULT` per result,
at least `RESCORE_MIN`) that on the benchmark's real vectors the returned lists are the
exact ones (see docs/knowledge.md). The document filter masks rows before the candidates
are chosen, so a filtered search never comes back short because other documents' rows
took the candidate slots.

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
from dataclasses import dataclass, replace
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
# Matrices of at least this many rows are searched by binary codes, then rescored exactly.
BINARY_MIN_ROWS = 20_000
# Candidates rescored exactly per wanted result, and at least this many.
RESCORE_PER_RESULT = 50
RESCORE_MIN = 1000

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
    # With BINARY_MIN_ROWS rows or more: the sign bits of (row - centre), packed into
    # 64-bit words and stored column-major, (ceil(dim / 64), rows), and the centre.
    codes: npt.NDArray[np.uint64] | None = None
    centre: npt.NDArray[np.float32] | None = None

    @property
    def nbytes(self) -> int:
        codes = self.codes.nbytes if self.codes is not None else 0
        return int(self.matrix.nbytes + self.chunk_ids.nbytes + self.document_codes.nbytes + codes)

    @property
    def cells(self) -> int:
        """What a search reads, in float-sized cells (for inline-or-thread)."""
        if self.codes is not None:
            return int(self.codes.size * 2)
        return int(self.matrix.size)

    def top(
        self,
        query: npt.NDArray[np.float32],
        k: int,
        document_ids: Sequence[str] | None,
        candidates: int | None = None,
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """The ids and cosine scores of the best `k` rows (of the given documents); with
        binary codes, of the best `k` among the `candidates` (`rescored(k)` by default)
        rows nearest by code."""
        empty = (np.empty(0, np.int64), np.empty(0, np.float32))
        if len(self.chunk_ids) == 0 or k <= 0 or self.matrix.shape[1] != query.shape[0]:
            return empty
        allowed = None
        if document_ids is not None:
            wanted = [self.documents[d] for d in document_ids if d in self.documents]
            if not wanted:
                return empty
            allowed = np.isin(self.document_codes, wanted)
        if self.codes is not None and self.centre is not None:
            limit = max(k, candidates if candidates is not None else rescored(k))
            rows = self._candidates(self.codes, self.centre, query, limit, allowed)
            scores = self.matrix[rows] @ query
        else:
            scores = self.matrix @ query
            if allowed is not None:
                scores[~allowed] = -np.inf
            rows = None
        best = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
        best = best[np.argsort(-scores[best], kind="stable")]
        best = best[np.isfinite(scores[best])]
        found = best if rows is None else rows[best]
        return self.chunk_ids[found], scores[best]

    @staticmethod
    def _candidates(
        codes: npt.NDArray[np.uint64],
        centre: npt.NDArray[np.float32],
        query: npt.NDArray[np.float32],
        n: int,
        allowed: npt.NDArray[np.bool_] | None,
    ) -> npt.NDArray[np.intp]:
        """The `n` rows (of the allowed ones) whose codes are nearest the query's, in
        row order; every allowed row when there are no more than `n`."""
        if allowed is not None and int(np.count_nonzero(allowed)) <= n:
            return np.flatnonzero(allowed)
        if allowed is None and codes.shape[1] <= n:
            return np.arange(codes.shape[1])
        query_code = binary_codes(query[None, :], centre)[0]
        # Word by word over the column-major codes: a few contiguous passes, not a
        # reduction over a short axis (4x faster at 100k rows).
        distances = np.bitwise_count(codes[0] ^ query_code[0]).astype(np.uint16)
        for word in range(1, len(codes)):
            distances += np.bitwise_count(codes[word] ^ query_code[word])
        bits = len(codes) * 64
        if allowed is not None:
            distances[~allowed] = bits + 1  # more than any code's distance
        # The n nearest without sorting 100k distances: they are small integers, so count
        # them, find the distance where the count reaches n, and take every row below it
        # and the first rows (in row order) at it.
        reached = np.cumsum(np.bincount(distances, minlength=bits + 2))
        cutoff = int(np.searchsorted(reached, n))
        below = np.flatnonzero(distances < cutoff)
        at = np.flatnonzero(distances == cutoff)[: n - len(below)]
        return np.sort(np.concatenate([below, at]))


class VectorIndex:
    """The matrices of this process, loaded on demand and dropped least recently used."""

    def __init__(
        self, max_bytes: int = DEFAULT_CACHE_BYTES, *, binary_min_rows: int = BINARY_MIN_ROWS
    ) -> None:
        self.max_bytes = max_bytes
        self.binary_min_rows = binary_min_rows
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
        cells = sum(m.cells for m in matrices)
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
        return await asyncio.to_thread(_build, rows, version, self.binary_min_rows)

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
        refreshed = await asyncio.to_thread(_refreshed, cached, rows, version, self.binary_min_rows)
        if refreshed is not None:
            self.refreshes += 1
        return refreshed

    def _evict(self) -> None:
        total = sum(m.nbytes for m in self._matrices.values())
        while total > self.max_bytes and len(self._matrices) > 1:
            _, dropped = self._matrices.popitem(last=False)
            total -= dropped.nbytes


def rescored(k: int) -> int:
    """How many binary-code candidates are ranked exactly for `k` results."""
    return max(k * RESCORE_PER_RESULT, RESCORE_MIN)


def binary_codes(
    rows: npt.NDArray[np.float32], centre: npt.NDArray[np.float32]
) -> npt.NDArray[np.uint64]:
    """The sign bits of `rows - centre`, packed into 64-bit words per row."""
    bits = np.packbits(rows > centre, axis=1)
    words = -(-rows.shape[1] // 64)
    padded = np.zeros((rows.shape[0], words * 8), dtype=np.uint8)
    padded[:, : bits.shape[1]] = bits
    return padded.view(np.uint64)


def with_binary_codes(matrix: KbMatrix, binary_min_rows: int) -> KbMatrix:
    """`matrix` with the binary codes of its rows when it has `binary_min_rows` or more
    (a fresh centre each time: a load or a refresh codes every row again, 0.1-0.2 s at 100k,
    beside the seconds of reading the rows)."""
    if len(matrix.chunk_ids) < binary_min_rows:
        return matrix
    centre = matrix.matrix.mean(axis=0, dtype=np.float64).astype(np.float32)
    codes = np.ascontiguousarray(binary_codes(matrix.matrix, centre).T)
    return replace(matrix, codes=codes, centre=centre)


def _build(
    rows: Sequence[tuple[int, str, bytes]], version: Hashable, binary_min_rows: int
) -> KbMatrix:
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
    built = KbMatrix(version, chunk_ids, codes.astype(np.int32), documents, matrix)
    return with_binary_codes(built, binary_min_rows)


def _refreshed(
    cached: KbMatrix,
    rows: Sequence[tuple[int, str, bytes | None]],
    version: Hashable,
    binary_min_rows: int,
) -> KbMatrix | None:
    """The cached matrix without the rows that left and with the rows after it appended;
    None when a row at or below its last id is new to it."""
    if not rows:
        return _build([], version, binary_min_rows)
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
    refreshed = KbMatrix(version, chunk_ids, codes.astype(np.int32), documents, matrix)
    return with_binary_codes(refreshed, binary_min_rows)


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
