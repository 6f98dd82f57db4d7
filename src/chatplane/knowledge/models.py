"""Tables of the knowledge domain: knowledge bases, their documents, chunks and vectors.

A document's chunks (and their vectors) are written in the same transaction that marks it
`ready`, so a worker that dies mid-document leaves nothing half-indexed. The lexical index
follows the chunks on its own: an FTS5 table kept by triggers on SQLite, a generated
`tsvector` column with a GIN index on Postgres (both made by the migration)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from chatplane.db.base import Base, CreatedMixin, IdMixin, UTCDateTime, utcnow

VISIBILITIES = ("private", "tenant")
DOCUMENT_STATES = ("queued", "indexing", "ready", "failed")

# Made by the migration in raw DDL, outside the models: autogenerate leaves them alone.
LEXICAL_INDEX_TABLE_PREFIX = "kb_chunks_fts"
LEXICAL_INDEX_NAMES = frozenset({"tsv", "ix_kb_chunks_tsv"})


def is_lexical_index(name: str | None, type_: str) -> bool:
    """Whether a schema object is part of the lexical index (an Alembic `include_object`
    helper: the FTS5 tables on SQLite, the tsvector column and its GIN index on Postgres)."""
    if name is None:
        return False
    if type_ == "table":
        return name.startswith(LEXICAL_INDEX_TABLE_PREFIX)
    return type_ in ("column", "index") and name in LEXICAL_INDEX_NAMES


# An integer key that SQLite makes the rowid (the FTS5 table's content_rowid) and Postgres
# a bigint identity.
ChunkKey = BigInteger().with_variant(Integer(), "sqlite")


class KnowledgeBase(IdMixin, CreatedMixin, Base):
    __tablename__ = "knowledge_bases"
    __table_args__ = (Index("ix_knowledge_bases_tenant_name", "tenant_id", "name"),)

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    visibility: Mapped[str] = mapped_column(String(16), default="private")
    # The model whose vectors answer queries (None: lexical only). A change of embedder
    # re-indexes in the background and then switches this in one update.
    embedding_model: Mapped[str | None] = mapped_column(String(200))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Document(IdMixin, CreatedMixin, Base):
    __tablename__ = "kb_documents"
    __table_args__ = (
        Index("ix_kb_documents_kb_created", "kb_id", "created_at", "id"),
        # The same content is stored once per knowledge base.
        UniqueConstraint("kb_id", "sha256", name="uq_kb_documents_kb_sha256"),
    )

    kb_id: Mapped[str] = mapped_column(ForeignKey("knowledge_bases.id", ondelete="CASCADE"))
    tenant_id: Mapped[str] = mapped_column(String(32))
    uploaded_by: Mapped[str | None] = mapped_column(String(32))
    filename: Mapped[str] = mapped_column(String(255))
    media_type: Mapped[str] = mapped_column(String(100))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    blob_key: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    error: Mapped[str | None] = mapped_column(Text)
    chunk_count: Mapped[int] = mapped_column(Integer, default=0)
    pages: Mapped[int | None] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    indexed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Chunk(Base):
    __tablename__ = "kb_chunks"
    __table_args__ = (
        UniqueConstraint("document_id", "ord", name="uq_kb_chunks_document_ord"),
        Index("ix_kb_chunks_kb", "kb_id"),
    )

    id: Mapped[int] = mapped_column(ChunkKey, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(String(32))
    kb_id: Mapped[str] = mapped_column(String(32))
    document_id: Mapped[str] = mapped_column(ForeignKey("kb_documents.id", ondelete="CASCADE"))
    ord: Mapped[int] = mapped_column(Integer)  # position in the document, from 0
    text: Mapped[str] = mapped_column(Text)
    heading: Mapped[str | None] = mapped_column(Text)  # the section path, "A > B"
    page: Mapped[int | None] = mapped_column(Integer)  # 1-based, for paged formats
    tokens: Mapped[int] = mapped_column(Integer)


class ChunkVector(Base):
    """One embedding of a chunk by one model; a re-index writes the new model's rows beside
    the old ones, and queries read only the knowledge base's `embedding_model`."""

    __tablename__ = "kb_vectors"
    __table_args__ = (Index("ix_kb_vectors_kb_model", "kb_id", "model"),)

    chunk_id: Mapped[int] = mapped_column(
        ChunkKey, ForeignKey("kb_chunks.id", ondelete="CASCADE"), primary_key=True
    )
    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(32))
    kb_id: Mapped[str] = mapped_column(String(32))
    dim: Mapped[int] = mapped_column(Integer)
    vector: Mapped[bytes] = mapped_column(LargeBinary)  # float32, little-endian, normalized
