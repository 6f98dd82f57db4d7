"""`knowledge`: what a knowledge base costs and how well it finds things, on both shapes.

Everything runs in this process against `chatplane.knowledge.index.KnowledgeIndex`, on a
SQLite file and on a fresh Postgres database of its own (`chatplane_bench_kb_<random>` on
127.0.0.1:5432 as `postgres`, dropped at the end; the Postgres half is skipped, and says why,
when it does not answer). No HTTP server: the numbers are the index's, not the API's.

The corpus is REAL text the repository does not write: the docstrings of the Python standard
library, read from the running interpreter (a fixed list of modules in
`bench/data/knowledge/queries.json`; one document per module, class, function, method or
property docstring, id `json.dumps`, `pathlib.PurePath.suffix`, ...). The queries and their
graded relevance judgements are committed beside it.

1. **Ingestion** (`ingestion.<shape>.<corpus>.<embedder>`): documents one after the other, as
   the ingest job does: extraction and chunking (in a thread), `KnowledgeIndex.embed`,
   `write_document` and the commit that marks the document ready. Chunks per second over the
   whole loop, and the time of each stage. Corpora: `docstrings` (one small document per
   docstring) and `module-pages` (one Markdown page per module, a `##` section per
   docstring). Embedders: `lexical` (none) and the local one (`local:...`; skipped, with the
   reason, when the `local-embeddings` extra is not installed).
2. **Latency** (`latency.<shape>.<size>.<mode>`): `KnowledgeIndex.search` p50/p99 at 1k, 10k
   and 100k chunks, `lexical` and `hybrid`. A sample of documents goes through the real
   `write_document`; the rest is bulk-inserted rows (the corpus' chunk texts again, under
   other documents). Their vectors are random unit vectors of the model's dimension: a
   brute-force or approximate vector search costs the same whatever the values, and
   embedding 100k chunks on 2 cores would take over an hour. The queries are the judged
   ones, in rounds.
3. **Quality** (`quality.<shape>.<mode>`): recall@5 and nDCG@10 of `lexical`, `vector` and
   `hybrid` over the `docstrings` knowledge base with real embeddings. `vector` is the exact
   cosine ranking of the stored vectors, computed here (the index has no vector-only mode);
   `lexical` is the index without an embedder, `hybrid` with it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import importlib
import inspect
import itertools
import math
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence, Set
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import orjson

from bench.procs import system_cpu
from bench.scaled import PG_ADMIN_DSN
from bench.stats import distribution_ms

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from chatplane.db.engine import Database
    from chatplane.knowledge.chunking import ChunkDraft
    from chatplane.knowledge.embedders import Embedder
    from chatplane.knowledge.index import KnowledgeIndex
    from chatplane.settings import Settings

KNOWLEDGE = "knowledge"
DATA_DIR = Path(__file__).resolve().parent / "data" / "knowledge"
QUERIES_PATH = DATA_DIR / "queries.json"
RESULTS_DIR = Path(__file__).resolve().parent / "results"
SHAPES = ("sqlite", "postgres")
DEFAULT_EMBEDDER = "local:all-MiniLM-L6-v2"
LEXICAL = "lexical"
VECTOR = "vector"
HYBRID = "hybrid"
QUALITY_MODES = (LEXICAL, VECTOR, HYBRID)
DOCSTRINGS = "docstrings"
MODULE_PAGES = "module-pages"
MEDIA_TYPE = "text/markdown"
RECALL_K = 5
NDCG_K = 10
# Chunks asked of a search when judging it: enough distinct documents for nDCG@10 after
# several chunks of one document collapse into one.
QUALITY_TOP_K = 30
# Bulk filler: chunks per filler document, and rows per transaction.
FILLER_CHUNKS_PER_DOCUMENT = 10
BULK_ROWS = 2000
VECTOR_SEED = 20261202
PG_DATABASE_PREFIX = "chatplane_bench_kb_"
BENCH_TENANT = "bench-knowledge"
BENCH_EMAIL = "bench-knowledge@example.com"
BYTES_PER_MB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class KnowledgeOptions:
    sizes: tuple[int, ...] = (1_000, 10_000, 100_000)
    rounds: int = 3  # latency: passes over the query set per size and mode
    warmup: int = 5  # latency: unrecorded searches per size and mode (after the first)
    top_k: int = 5  # latency: passages per search (the default CHATPLANE_KB_TOP_K)
    max_cell_s: float = 90.0  # latency: a size and mode stops measuring after this
    sample_documents: int = 200  # latency: documents written with the real write_document
    shapes: tuple[str, ...] = SHAPES
    embedder: str = DEFAULT_EMBEDDER  # "none" for lexical only
    queries: int | None = None  # only the first N judged queries (tiny runs)
    distractors: int | None = None  # with `queries`: unjudged documents kept beside theirs
    module_pages: bool = True  # also ingest the corpus as one Markdown page per module
    pages_embedded: bool = False  # ... with the embedder too (embedding dominates either way)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


# The corpus ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Docstring:
    id: str  # "json.dumps"
    text: str


def read_queries_file(path: Path = QUERIES_PATH) -> dict[str, Any]:
    document: dict[str, Any] = orjson.loads(path.read_bytes())
    return document


def stdlib_corpus(modules: Sequence[str], *, min_chars: int) -> list[Docstring]:
    """One document per docstring of `modules` (see `queries.json` for the rules); sorted by
    id. Identical docstrings (aliases, bound methods of a module-level instance) are kept
    once, under the id with the fewest dots, then the shortest, then the first."""
    found: dict[str, str] = {}
    for name in modules:
        module = importlib.import_module(name)
        _add_docstring(found, name, module, min_chars)
        for attr in _public_names(module):
            obj = getattr(module, attr, None)
            if not (inspect.isclass(obj) or inspect.isroutine(obj)):
                continue
            if getattr(obj, "__module__", None) == "builtins":
                continue
            _add_docstring(found, f"{name}.{attr}", obj, min_chars)
            if inspect.isclass(obj):
                for member_name, member in vars(obj).items():
                    if member_name.startswith("_"):
                        continue
                    if isinstance(member, staticmethod | classmethod):
                        member = member.__func__
                    if inspect.isroutine(member) or inspect.isdatadescriptor(member):
                        _add_docstring(found, f"{name}.{attr}.{member_name}", member, min_chars)
    first_id: dict[str, str] = {}
    for doc_id in sorted(found, key=lambda i: (i.count("."), len(i), i)):
        first_id.setdefault(found[doc_id], doc_id)
    return sorted((Docstring(i, text) for text, i in first_id.items()), key=lambda d: d.id)


def _public_names(module: Any) -> list[str]:
    names = getattr(module, "__all__", None)
    if names is None:
        own = {module.__name__, "_" + module.__name__.rsplit(".", 1)[-1]}
        names = [
            name
            for name in dir(module)
            if not name.startswith("_")
            and getattr(getattr(module, name), "__module__", None) in own
        ]
    return sorted({name for name in names if not name.startswith("_")})


def _add_docstring(found: dict[str, str], doc_id: str, obj: Any, min_chars: int) -> None:
    doc = getattr(obj, "__doc__", None)
    if isinstance(doc, str):
        text = inspect.cleandoc(doc)
        if len(text) >= min_chars:
            found[doc_id] = text


def docstring_markdown(doc: Docstring) -> bytes:
    """A docstring as the file a user would upload: its id as the title."""
    return f"# {doc.id}\n\n{doc.text}\n".encode()


def module_pages(docs: Sequence[Docstring], modules: Sequence[str]) -> list[tuple[str, bytes]]:
    """The corpus as one Markdown page per module (`os.path.join` goes to `os.path`, not
    `os`): the module's docstring, then a `##` section per other docstring."""
    by_length = sorted(modules, key=len, reverse=True)
    pages: dict[str, list[str]] = {name: [f"# {name}\n"] for name in modules}
    for doc in docs:
        owner = next(m for m in by_length if doc.id == m or doc.id.startswith(m + "."))
        pages[owner].append(doc.text if doc.id == owner else f"## {doc.id}\n\n{doc.text}")
    return [
        (name, "\n\n".join(parts).encode() + b"\n")
        for name, parts in pages.items()
        if len(parts) > 1
    ]


# Judgements and metrics ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Query:
    id: str
    text: str
    relevant: dict[str, int]  # docstring id -> grade (1 related, 2 answers it)


@dataclass(frozen=True, slots=True)
class Judgements:
    queries: list[Query]  # judged ids missing from the corpus removed, empty queries dropped
    judged_ids: int  # (query, id) pairs in the file
    missing_ids: list[str]  # judged ids that are not in this interpreter's corpus
    skipped_queries: list[str]  # queries left with no judged document in the corpus


def load_judgements(document: Mapping[str, Any], corpus_ids: Set[str]) -> Judgements:
    queries: list[Query] = []
    missing: set[str] = set()
    skipped: list[str] = []
    judged = 0
    for entry in document["queries"]:
        relevant = {doc_id: int(grade) for doc_id, grade in entry["relevant"].items()}
        judged += len(relevant)
        missing.update(doc_id for doc_id in relevant if doc_id not in corpus_ids)
        kept = {doc_id: grade for doc_id, grade in relevant.items() if doc_id in corpus_ids}
        if any(grade > 0 for grade in kept.values()):
            queries.append(Query(entry["id"], entry["query"], kept))
        else:
            skipped.append(entry["id"])
    return Judgements(queries, judged, sorted(missing), skipped)


def recall_at_k(ranked: Sequence[str], relevant: Mapping[str, int], k: int) -> float:
    """The share of the relevant documents (grade > 0) found in the first k."""
    wanted = {doc_id for doc_id, grade in relevant.items() if grade > 0}
    if not wanted:
        raise ValueError("recall needs at least one relevant document")
    return len(wanted.intersection(ranked[:k])) / len(wanted)


def ndcg_at_k(ranked: Sequence[str], relevant: Mapping[str, int], k: int) -> float:
    """Normalised discounted cumulative gain with linear gains: the sum of grade/log2(rank+1)
    over the first k, divided by the same sum for the ideal order of every judged grade."""
    ideal = sorted((g for g in relevant.values() if g > 0), reverse=True)[:k]
    if not ideal:
        raise ValueError("nDCG needs at least one relevant document")
    dcg = sum(
        relevant.get(doc_id, 0) / math.log2(rank + 2) for rank, doc_id in enumerate(ranked[:k])
    )
    best = sum(grade / math.log2(rank + 2) for rank, grade in enumerate(ideal))
    return dcg / best


def distinct(items: Iterator[str] | Sequence[str]) -> list[str]:
    """First occurrences in order (several chunks of a document count as the document)."""
    return list(dict.fromkeys(items))


# Databases -------------------------------------------------------------------------------


@dataclass
class ShapeDatabase:
    shape: str
    url: str
    settings: Settings
    db: Database
    name: str  # the file's path or the Postgres database's name

    async def size_mb(self) -> float:
        if self.shape == "sqlite":
            files = [Path(self.name), Path(self.name + "-wal")]
            return round(sum(p.stat().st_size for p in files if p.exists()) / BYTES_PER_MB, 1)
        from sqlalchemy import text

        async with self.db.session() as session:
            size = (
                await session.execute(text("SELECT pg_database_size(current_database())"))
            ).scalar_one()
        return round(int(size) / BYTES_PER_MB, 1)


async def postgres_missing(timeout_s: float = 2.0) -> str | None:
    """None when the local Postgres answers; else why not."""
    try:
        connection = await asyncpg.connect(PG_ADMIN_DSN, timeout=timeout_s)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        return f"Postgres at {PG_ADMIN_DSN}: {exc}"
    await connection.close()
    return None


@contextlib.asynccontextmanager
async def shape_database(
    shape: str, workdir: Path, embeddings: str
) -> AsyncIterator[ShapeDatabase]:
    """A migrated, empty database of the shape; a Postgres one is dropped at the end."""
    from chatplane.db import migrate
    from chatplane.db.engine import Database, create_engine
    from chatplane.settings import Settings

    data_dir = workdir / shape
    await asyncio.to_thread(data_dir.mkdir, parents=True, exist_ok=True)
    if shape == "sqlite":
        name = str((data_dir / "chatplane.db").resolve())
        url = f"sqlite+aiosqlite:///{name}"
    elif shape == "postgres":
        name = PG_DATABASE_PREFIX + uuid.uuid4().hex[:12]
        url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
        admin = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
    else:
        raise ValueError(f"unknown shape {shape!r}; one of {', '.join(SHAPES)}")
    settings = Settings(
        _env_file=None,
        data_dir=data_dir,
        database_url=url,
        embeddings=embeddings,
    )
    db: Database | None = None
    try:
        await migrate.upgrade(url)
        db = Database(create_engine(settings))
        yield ShapeDatabase(shape, url, settings, db, name)
    finally:
        if db is not None:
            await db.close()
        if shape == "postgres":
            admin = await asyncpg.connect(PG_ADMIN_DSN)
            try:
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            finally:
                await admin.close()


@dataclass(frozen=True, slots=True)
class Owner:
    tenant_id: str
    user_id: str


async def create_owner(db: Database) -> Owner:
    from chatplane.auth.models import Tenant, User
    from chatplane.db.base import new_id

    tenant_id, user_id = new_id(), new_id()
    async with db.session() as session:
        session.add(Tenant(id=tenant_id, slug=BENCH_TENANT, name="Knowledge bench"))
        await session.flush()
        session.add(User(id=user_id, tenant_id=tenant_id, email=BENCH_EMAIL, role="owner"))
        await session.commit()
    return Owner(tenant_id, user_id)


async def create_knowledge_base(
    db: Database, owner: Owner, name: str, embedding_model: str | None
) -> str:
    from chatplane.db.base import new_id
    from chatplane.knowledge.models import KnowledgeBase

    kb_id = new_id()
    async with db.session() as session:
        session.add(
            KnowledgeBase(
                id=kb_id,
                tenant_id=owner.tenant_id,
                owner_id=owner.user_id,
                name=name,
                description="",
                visibility="private",
                embedding_model=embedding_model,
            )
        )
        await session.commit()
    return kb_id


def _document_row(
    owner: Owner, kb_id: str, filename: str, data: bytes, status: str
) -> dict[str, Any]:
    from chatplane.db.base import new_id, utcnow

    now = utcnow()
    digest = hashlib.sha256(data).hexdigest()
    return {
        "id": new_id(),
        "created_at": now,
        "updated_at": now,
        "kb_id": kb_id,
        "tenant_id": owner.tenant_id,
        "uploaded_by": owner.user_id,
        "filename": filename,
        "media_type": MEDIA_TYPE,
        "size_bytes": len(data),
        "sha256": digest,
        "blob_key": f"bench/{digest}",
        "status": status,
        "error": None,
        "chunk_count": 0,
        "pages": None,
        "indexed_at": None,
    }


async def insert_documents(db: Database, rows: Sequence[dict[str, Any]]) -> None:
    from sqlalchemy import insert

    from chatplane.knowledge.models import Document

    async with db.session() as session:
        for start in range(0, len(rows), BULK_ROWS):
            await session.execute(insert(Document), list(rows[start : start + BULK_ROWS]))
        await session.commit()


# Ingestion -------------------------------------------------------------------------------


@dataclass
class Ingested:
    """What one ingestion wrote, kept for the quality and latency parts."""

    stats: dict[str, Any]
    source_of: dict[str, str] = field(default_factory=dict)  # document id -> docstring id
    drafts: dict[str, list[ChunkDraft]] = field(default_factory=dict)  # by docstring id
    vectors: dict[str, Any] = field(default_factory=dict)  # by docstring id, as embed returned


def _extract_and_chunk(
    data: bytes, settings: Settings
) -> tuple[Any, list[ChunkDraft], float, float]:
    from chatplane.knowledge.chunking import chunk_document
    from chatplane.knowledge.extract import extract

    started = time.perf_counter()
    extracted = extract(data, MEDIA_TYPE)
    extracted_at = time.perf_counter()
    drafts = chunk_document(
        extracted,
        max_tokens=settings.kb_chunk_tokens,
        overlap_tokens=settings.kb_chunk_overlap_tokens,
    )
    return extracted, drafts, extracted_at - started, time.perf_counter() - extracted_at


async def ingest(
    shape: ShapeDatabase,
    index: KnowledgeIndex,
    owner: Owner,
    kb_id: str,
    files: Sequence[tuple[str, bytes]],
    *,
    keep: bool,
) -> Ingested:
    """Index `files` ((source id, bytes)) one document at a time, as the ingest job does;
    the document rows exist beforehand (the upload made them), status `indexing`."""
    from sqlalchemy import update

    from chatplane.db.base import utcnow
    from chatplane.knowledge.extract import DocumentUnreadable
    from chatplane.knowledge.models import Document

    rows = [_document_row(owner, kb_id, f"{source}.md", data, "indexing") for source, data in files]
    await insert_documents(shape.db, rows)
    if files:  # the first extraction imports the readers: not a document's cost
        await asyncio.to_thread(_extract_and_chunk, files[0][1], shape.settings)
    outcome = Ingested(stats={})
    stages = dict.fromkeys(("extract", "chunk", "embed", "write"), 0.0)
    per_document: list[float] = []
    chunks = 0
    errors: dict[str, int] = {}
    cpu_before = time.process_time()
    system_before = system_cpu()
    started = time.perf_counter()
    for row, (source, data) in zip(rows, files, strict=True):
        began = time.perf_counter()
        try:
            extracted, drafts, extract_s, chunk_s = await asyncio.to_thread(
                _extract_and_chunk, data, shape.settings
            )
        except DocumentUnreadable as exc:
            errors[exc.code] = errors.get(exc.code, 0) + 1
            continue
        stages["extract"] += extract_s
        stages["chunk"] += chunk_s
        embed_started = time.perf_counter()
        vectors = await index.embed(drafts)
        write_started = time.perf_counter()
        stages["embed"] += write_started - embed_started
        async with shape.db.session() as session:
            count = await index.write_document(
                session,
                tenant_id=owner.tenant_id,
                kb_id=kb_id,
                document_id=row["id"],
                drafts=drafts,
                vectors=vectors,
            )
            now = utcnow()
            await session.execute(
                update(Document)
                .where(Document.id == row["id"])
                .values(
                    status="ready",
                    chunk_count=count,
                    pages=extracted.pages,
                    indexed_at=now,
                    updated_at=now,
                )
            )
            await session.commit()
        finished = time.perf_counter()
        stages["write"] += finished - write_started
        per_document.append(finished - began)
        chunks += count
        outcome.source_of[row["id"]] = source
        if keep:
            outcome.drafts[source] = list(drafts)
            outcome.vectors[source] = vectors
    elapsed = time.perf_counter() - started
    cpu_s = time.process_time() - cpu_before
    documents = len(per_document)
    outcome.stats = {
        "documents": documents,
        "chunks": chunks,
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "elapsed_s": round(elapsed, 3),
        "chunks_per_s": round(chunks / elapsed, 1) if elapsed else None,
        "documents_per_s": round(documents / elapsed, 1) if elapsed else None,
        "chunks_per_document": round(chunks / documents, 2) if documents else None,
        "stage_s": {name: round(seconds, 3) for name, seconds in stages.items()},
        "stage_share": {
            name: round(seconds / elapsed, 3) if elapsed else None
            for name, seconds in stages.items()
        },
        "document_ms": distribution_ms(per_document),
        "bench_cpu_cores": round(cpu_s / elapsed, 3) if elapsed else None,
        "machine_cpu": _machine_cpu(system_before, elapsed),
    }
    return outcome


def _machine_cpu(before: Any, elapsed_s: float) -> dict[str, float | None]:
    """Cores the whole machine was busy and stolen during a phase. Postgres runs beside the
    bench, so "other" work is not separable here: a busy machine shows as busy_cores well
    above what the phase itself needs."""
    after = system_cpu()
    if elapsed_s <= 0:
        return {"busy_cores": None, "steal_cores": None}
    return {
        "busy_cores": round((after.busy_s - before.busy_s) / elapsed_s, 3),
        "steal_cores": round((after.steal_s - before.steal_s) / elapsed_s, 3),
    }


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


class Filler:
    """Bulk rows up to a number of chunks: the corpus' chunk texts again, under filler
    documents of FILLER_CHUNKS_PER_DOCUMENT chunks, each chunk with a random unit vector of
    the embedder's model. Like every writer of chunks, it bumps the knowledge base's
    `updated_at` in the same transaction (the index's vector caches key on it)."""

    def __init__(
        self,
        shape: ShapeDatabase,
        owner: Owner,
        kb_id: str,
        texts: Sequence[tuple[str | None, str, int]],
        embedder: Embedder | None,
    ) -> None:
        import numpy as np

        self.shape = shape
        self.owner = owner
        self.kb_id = kb_id
        self._texts = itertools.cycle(texts)
        self._embedder = embedder
        self._documents = 0
        self._rng = np.random.default_rng(VECTOR_SEED)

    async def add(self, chunks: int) -> float:
        """Insert `chunks` more chunk rows (and vectors); returns the seconds it took. The
        fill ends as the workers' writes do on Postgres: with fresh lexical statistics (the
        workers refresh them as the table grows; one bulk fill has to ask for it)."""
        from chatplane.knowledge.lexical import refresh_statistics

        started = time.perf_counter()
        remaining = chunks
        while remaining > 0:
            batch = min(remaining, BULK_ROWS)
            await self._add_batch(batch)
            remaining -= batch
        async with self.shape.db.session() as session:
            await refresh_statistics(session, self.shape.db.engine.dialect.name, force=True)
        return time.perf_counter() - started

    async def _add_batch(self, batch: int) -> None:
        import numpy as np
        from sqlalchemy import insert, update

        from chatplane.db.base import utcnow
        from chatplane.knowledge.models import Chunk, ChunkVector, Document, KnowledgeBase

        documents, rows = [], []
        for start in range(0, batch, FILLER_CHUNKS_PER_DOCUMENT):
            self._documents += 1
            name = f"filler-{self._documents}"
            document = _document_row(self.owner, self.kb_id, name, name.encode(), "ready")
            document["chunk_count"] = min(FILLER_CHUNKS_PER_DOCUMENT, batch - start)
            documents.append(document)
            for ord_ in range(document["chunk_count"]):
                heading, text, tokens = next(self._texts)
                rows.append(
                    {
                        "tenant_id": self.owner.tenant_id,
                        "kb_id": self.kb_id,
                        "document_id": document["id"],
                        "ord": ord_,
                        "text": text,
                        "heading": heading,
                        "page": None,
                        "tokens": tokens,
                    }
                )
        async with self.shape.db.session() as session:
            await session.execute(insert(Document), documents)
            inserted = await session.execute(
                insert(Chunk).returning(Chunk.id, sort_by_parameter_order=True), rows
            )
            ids = list(inserted.scalars())
            embedder = self._embedder
            if embedder is not None and embedder.dim:
                vectors = self._rng.standard_normal((len(ids), embedder.dim), dtype=np.float32)
                vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
                await session.execute(
                    insert(ChunkVector),
                    [
                        {
                            "chunk_id": chunk_id,
                            "model": embedder.model,
                            "tenant_id": self.owner.tenant_id,
                            "kb_id": self.kb_id,
                            "dim": embedder.dim,
                            "vector": vector.astype("<f4").tobytes(),
                        }
                        for chunk_id, vector in zip(ids, vectors, strict=True)
                    ],
                )
            await session.execute(
                update(KnowledgeBase)
                .where(KnowledgeBase.id == self.kb_id)
                .values(updated_at=utcnow())
            )
            await session.commit()


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
        _document_row(owner, kb_id, f"{source}.md", f"sample {source}".encode(), "ready")
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
        "machine_cpu": _machine_cpu(system_before, elapsed),
    }


async def query_embedding_ms(embedder: Embedder, queries: Sequence[str]) -> dict[str, float]:
    """What embedding the query alone costs (part of every hybrid search)."""
    samples = []
    for query in queries:
        started = time.perf_counter()
        await embedder.embed([query])
        samples.append(time.perf_counter() - started)
    return distribution_ms(samples)


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
        (draft.heading, draft.text, draft.tokens)
        for drafts in ingested.drafts.values()
        for draft in drafts
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
        if embedder is None:
            cell[HYBRID] = {"skipped": "no embedder"}
        sizes[str(size)] = cell
    return {"sample_chunks": sample_chunks, "sizes": sizes}


# The scenario ----------------------------------------------------------------------------


def embedder_label(setting: str) -> str:
    """The row name of an embeddings setting: `local`, `openai`; `lexical` for `none`."""
    kind = setting.partition(":")[0]
    return LEXICAL if kind == "none" else kind


VECTORS_NOTE = (
    "latency: a sample of documents is written with write_document and their real vectors; "
    "every other chunk row is a bulk insert of the corpus' chunk texts again, with a random "
    "unit vector (float32, the model's dimension, seed {seed}) under the model's name. Search "
    "latency does not depend on the vector values; quality uses only real vectors."
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
        "vectors": VECTORS_NOTE.format(seed=VECTOR_SEED),
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


# Results ---------------------------------------------------------------------------------


def knowledge_targets(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per shape: hybrid's nDCG@10 above both lexical-only and vector-only."""
    checks = []
    metric = f"ndcg@{NDCG_K}"
    for shape, modes in result["knowledge"]["quality"].items():
        hybrid = modes[HYBRID].get(metric)
        singles = [modes[mode].get(metric) for mode in (LEXICAL, VECTOR)]
        best = max((value for value in singles if value is not None), default=None)
        met = None if hybrid is None or None in singles else hybrid > best
        checks.append(
            {
                "name": f"hybrid_ndcg10_above_lexical_and_vector_{shape}",
                "target": best,
                "measured": hybrid,
                "op": ">",
                "met": met,
                "note": "nDCG@10 of hybrid over the better of lexical-only and vector-only",
            }
        )
    return checks


def knowledge_lines(result: Mapping[str, Any]) -> list[str]:
    """The ingestion, latency and quality rows as text."""
    block = result["knowledge"]
    corpus = block["corpus"]
    lines = [
        f"knowledge: {corpus['documents']} docstrings of {corpus['modules']} modules "
        f"(Python {corpus['python']}), embedder {block['embedder']['model'] or '-'}"
        + (f" (skipped: {block['embedder']['skipped']})" if block["embedder"]["skipped"] else "")
    ]
    for shape, reason in block["shapes_skipped"].items():
        lines.append(f"knowledge: {shape} skipped: {reason}")
    lines.append(f"{'ingestion':>40} {'docs':>6} {'chunks':>7} {'chunks/s':>9} {'docs/s':>7}")
    for shape, corpora in block["ingestion"].items():
        for corpus_name, rows in corpora.items():
            for label, row in rows.items():
                name = f"{shape} {corpus_name} {label}"
                if "skipped" in row:
                    lines.append(f"{name:>40} skipped: {row['skipped']}")
                    continue
                lines.append(
                    f"{name:>40} {row['documents']:>6} {row['chunks']:>7} "
                    f"{row['chunks_per_s']:>9} {row['documents_per_s']:>7}"
                )
    lines.append(f"{'search latency ms':>40} {'p50':>8} {'p99':>8} {'first':>8} {'n':>5}")
    for shape, latency in block["latency"].items():
        for size, cell in latency["sizes"].items():
            for mode in (LEXICAL, HYBRID):
                row = cell[mode]
                name = f"{shape} {size} {mode}"
                if "skipped" in row:
                    lines.append(f"{name:>40} skipped: {row['skipped']}")
                    continue
                lines.append(
                    f"{name:>40} {row['ms']['p50']:>8.2f} {row['ms']['p99']:>8.2f} "
                    f"{row['first_ms']:>8.1f} {row['searches']:>5}"
                )
    recall, ndcg = f"recall@{RECALL_K}", f"ndcg@{NDCG_K}"
    lines.append(f"{'quality':>40} {recall:>9} {ndcg:>8}")
    for shape, modes in block["quality"].items():
        for mode, row in modes.items():
            name = f"{shape} {mode}"
            if "skipped" in row:
                lines.append(f"{name:>40} skipped: {row['skipped']}")
                continue
            lines.append(f"{name:>40} {row[recall]:>9.3f} {row[ndcg]:>8.3f}")
    return lines


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    defaults = KnowledgeOptions()
    parser = argparse.ArgumentParser(
        prog="python -m bench.knowledge",
        description="Knowledge bases: ingestion, search latency and retrieval quality on "
        "SQLite and Postgres; writes bench/results/knowledge-<timestamp>.json.",
    )

    def numbers(value: str) -> tuple[int, ...]:
        return tuple(int(part) for part in value.split(",") if part)

    parser.add_argument("--sizes", type=numbers, default=defaults.sizes, help="chunks, a,b,c")
    parser.add_argument("--rounds", type=int, default=defaults.rounds)
    parser.add_argument("--warmup", type=int, default=defaults.warmup)
    parser.add_argument("--top-k", type=int, default=defaults.top_k)
    parser.add_argument("--max-cell-s", type=float, default=defaults.max_cell_s)
    parser.add_argument("--sample-documents", type=int, default=defaults.sample_documents)
    parser.add_argument("--shapes", type=lambda v: tuple(v.split(",")), default=defaults.shapes)
    parser.add_argument("--embedder", default=defaults.embedder, help="local:<model> or none")
    parser.add_argument("--no-module-pages", action="store_true")
    parser.add_argument("--pages-embedded", action="store_true", help="embed the module pages too")
    parser.add_argument("--results-dir", type=Path, default=None)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    if not args.sizes or min(args.sizes) < 1 or args.rounds < 1 or args.warmup < 0:
        parser.error("--sizes >= 1, --rounds >= 1 and --warmup >= 0 are required")
    if any(shape not in SHAPES for shape in args.shapes):
        parser.error(f"--shapes: a list of {', '.join(SHAPES)}")
    return args


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """The scenario on its own, written like `bench.run` writes it."""
    from bench.report import machine_info, source_revision, write_json

    options = KnowledgeOptions(
        sizes=args.sizes,
        rounds=args.rounds,
        warmup=args.warmup,
        top_k=args.top_k,
        max_cell_s=args.max_cell_s,
        sample_documents=args.sample_documents,
        shapes=args.shapes,
        embedder=args.embedder,
        module_pages=not args.no_module_pages,
        pages_embedded=args.pages_embedded,
    )
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="chatplane-bench-kb-") as scratch:
        workdir = args.workdir.resolve() / f"run-{stamp}" if args.workdir else Path(scratch)
        outcome = await measure_knowledge(workdir, options)
    document: dict[str, Any] = {
        "scenario": KNOWLEDGE,
        "timestamp": stamp,
        "started_at": round(started, 3),
        "machine": machine_info(),
        "revision": source_revision(),
        "options": options.as_json(),
        **outcome,
    }
    document["targets"] = knowledge_targets(document)
    path = write_json(args.results_dir or RESULTS_DIR, KNOWLEDGE, stamp, document)
    for line in knowledge_lines(document):
        print(line)
    print(f"results: {path}")
    return document


def main(argv: Sequence[str] | None = None) -> int:
    document = asyncio.run(run(parse_args(argv)))
    return 1 if document["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
