"""The two shapes' databases, the bench tenant and knowledge bases, and the bulk filler."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg

from bench.knowledge.common import (
    BENCH_EMAIL,
    BENCH_TENANT,
    BULK_ROWS,
    BYTES_PER_MB,
    FILLER_CHUNKS_PER_DOCUMENT,
    FILLER_NOISE,
    MEDIA_TYPE,
    PG_DATABASE_PREFIX,
    SHAPES,
    VECTOR_SEED,
)
from bench.scaled import PG_ADMIN_DSN

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from chatplane.db.engine import Database
    from chatplane.knowledge.embedders import Embedder
    from chatplane.settings import Settings


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


def document_row(
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


class Filler:
    """Bulk rows up to a number of chunks: the corpus' chunk texts again, under filler
    documents of FILLER_CHUNKS_PER_DOCUMENT chunks. Each copy's vector (under the
    embedder's model) is its text's real vector plus Gaussian noise of FILLER_NOISE per
    dimension, normalised (cosine ~0.93 to the original: a knowledge base of many near
    copies, as clustered as real text and harder for approximate search than random
    vectors); a text without a real vector gets a random unit vector. Like every writer of
    chunks, it bumps the knowledge base's `updated_at` in the same transaction (the
    index's vector caches key on it)."""

    def __init__(
        self,
        shape: ShapeDatabase,
        owner: Owner,
        kb_id: str,
        texts: Sequence[tuple[str | None, str, int, npt.NDArray[np.float32] | None]],
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

        documents, rows, originals = [], [], []
        for start in range(0, batch, FILLER_CHUNKS_PER_DOCUMENT):
            self._documents += 1
            name = f"filler-{self._documents}"
            document = document_row(self.owner, self.kb_id, name, name.encode(), "ready")
            document["chunk_count"] = min(FILLER_CHUNKS_PER_DOCUMENT, batch - start)
            documents.append(document)
            for ord_ in range(document["chunk_count"]):
                heading, text, tokens, original = next(self._texts)
                originals.append(original)
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
                noise = self._rng.standard_normal((len(ids), embedder.dim), dtype=np.float32)
                vectors = np.stack(
                    [
                        original + FILLER_NOISE * row if original is not None else row
                        for original, row in zip(originals, noise, strict=True)
                    ]
                )
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
