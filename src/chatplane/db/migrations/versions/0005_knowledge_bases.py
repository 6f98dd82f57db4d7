"""knowledge bases: knowledge_bases, kb_documents, kb_chunks with their lexical index (FTS5
on SQLite, a generated tsvector with a GIN index on Postgres), kb_vectors; knowledge base
ids on conversations and turns, citations on messages

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 18:20:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHUNK_KEY = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

# SQLite: an external-content FTS5 table over kb_chunks (rowid = kb_chunks.id), kept in step
# by triggers, so a deleted chunk leaves the index in the same transaction.
SQLITE_FTS = (
    """CREATE VIRTUAL TABLE kb_chunks_fts USING fts5(
        heading, text, content='kb_chunks', content_rowid='id',
        tokenize='porter unicode61 remove_diacritics 2')""",
    """CREATE TRIGGER kb_chunks_fts_insert AFTER INSERT ON kb_chunks BEGIN
        INSERT INTO kb_chunks_fts(rowid, heading, text) VALUES (new.id, new.heading, new.text);
    END""",
    """CREATE TRIGGER kb_chunks_fts_delete AFTER DELETE ON kb_chunks BEGIN
        INSERT INTO kb_chunks_fts(kb_chunks_fts, rowid, heading, text)
        VALUES ('delete', old.id, old.heading, old.text);
    END""",
    """CREATE TRIGGER kb_chunks_fts_update AFTER UPDATE ON kb_chunks BEGIN
        INSERT INTO kb_chunks_fts(kb_chunks_fts, rowid, heading, text)
        VALUES ('delete', old.id, old.heading, old.text);
        INSERT INTO kb_chunks_fts(rowid, heading, text) VALUES (new.id, new.heading, new.text);
    END""",
)
SQLITE_FTS_DROP = (
    "DROP TRIGGER IF EXISTS kb_chunks_fts_update",
    "DROP TRIGGER IF EXISTS kb_chunks_fts_delete",
    "DROP TRIGGER IF EXISTS kb_chunks_fts_insert",
    "DROP TABLE IF EXISTS kb_chunks_fts",
)
# Postgres: a stored tsvector (heading weighted above the text) and a GIN index on it. The
# default parser keeps `json.dumps`, `os.path` or `read_text` as one token, so the word
# `json` would never match them; punctuation becomes a space first, which splits text into
# letters and digits as FTS5's `unicode61` does on SQLite (and as queries are split).
_SPLIT = "regexp_replace({}, '[[:punct:]]+', ' ', 'g')"
POSTGRES_FTS = (
    f"""ALTER TABLE kb_chunks ADD COLUMN tsv tsvector GENERATED ALWAYS AS (
        setweight(to_tsvector('english', {_SPLIT.format("coalesce(heading, '')")}), 'A')
        || setweight(to_tsvector('english', {_SPLIT.format("text")}), 'B')) STORED""",
    "CREATE INDEX ix_kb_chunks_tsv ON kb_chunks USING gin (tsv)",
)


def upgrade() -> None:
    op.create_table(
        "knowledge_bases",
        sa.Column("tenant_id", sa.String(length=32), nullable=False),
        sa.Column("owner_id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("visibility", sa.String(length=16), nullable=False),
        sa.Column("embedding_model", sa.String(length=200), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["owner_id"],
            ["users.id"],
            name=op.f("fk_knowledge_bases_owner_id_users"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_knowledge_bases_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_knowledge_bases")),
    )
    op.create_index(
        "ix_knowledge_bases_tenant_name", "knowledge_bases", ["tenant_id", "name"], unique=False
    )
    op.create_table(
        "kb_documents",
        sa.Column("kb_id", sa.String(length=32), nullable=False),
        sa.Column("tenant_id", sa.String(length=32), nullable=False),
        sa.Column("uploaded_by", sa.String(length=32), nullable=True),
        sa.Column("filename", sa.String(length=255), nullable=False),
        sa.Column("media_type", sa.String(length=100), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("blob_key", sa.String(length=255), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("chunk_count", sa.Integer(), nullable=False),
        sa.Column("pages", sa.Integer(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("indexed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["kb_id"],
            ["knowledge_bases.id"],
            name=op.f("fk_kb_documents_kb_id_knowledge_bases"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_kb_documents")),
        sa.UniqueConstraint("kb_id", "sha256", name="uq_kb_documents_kb_sha256"),
    )
    op.create_index(
        "ix_kb_documents_kb_created", "kb_documents", ["kb_id", "created_at", "id"], unique=False
    )
    op.create_table(
        "kb_chunks",
        sa.Column("id", CHUNK_KEY, autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.String(length=32), nullable=False),
        sa.Column("kb_id", sa.String(length=32), nullable=False),
        sa.Column("document_id", sa.String(length=32), nullable=False),
        sa.Column("ord", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("heading", sa.Text(), nullable=True),
        sa.Column("page", sa.Integer(), nullable=True),
        sa.Column("tokens", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["document_id"],
            ["kb_documents.id"],
            name=op.f("fk_kb_chunks_document_id_kb_documents"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_kb_chunks")),
        sa.UniqueConstraint("document_id", "ord", name="uq_kb_chunks_document_ord"),
        # Ids are never reused (SQLite would give a deleted tail row's id to the next
        # insert): the in-process vector matrices keep a cached row while its id exists.
        sqlite_autoincrement=True,
    )
    op.create_index("ix_kb_chunks_kb", "kb_chunks", ["kb_id"], unique=False)
    op.create_table(
        "kb_vectors",
        sa.Column("chunk_id", CHUNK_KEY, nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("tenant_id", sa.String(length=32), nullable=False),
        sa.Column("kb_id", sa.String(length=32), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["chunk_id"],
            ["kb_chunks.id"],
            name=op.f("fk_kb_vectors_chunk_id_kb_chunks"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("chunk_id", "model", name=op.f("pk_kb_vectors")),
    )
    op.create_index("ix_kb_vectors_kb_model", "kb_vectors", ["kb_id", "model"], unique=False)
    statements = SQLITE_FTS if op.get_bind().dialect.name == "sqlite" else POSTGRES_FTS
    for statement in statements:
        op.execute(statement)

    with op.batch_alter_table("conversations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("knowledge_base_ids", sa.JSON(), nullable=True))
    with op.batch_alter_table("turns", schema=None) as batch_op:
        batch_op.add_column(sa.Column("knowledge_base_ids", sa.JSON(), nullable=True))
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("citations", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_column("citations")
    with op.batch_alter_table("turns", schema=None) as batch_op:
        batch_op.drop_column("knowledge_base_ids")
    with op.batch_alter_table("conversations", schema=None) as batch_op:
        batch_op.drop_column("knowledge_base_ids")
    if op.get_bind().dialect.name == "sqlite":
        for statement in SQLITE_FTS_DROP:
            op.execute(statement)
    op.drop_index("ix_kb_vectors_kb_model", table_name="kb_vectors")
    op.drop_table("kb_vectors")
    op.drop_index("ix_kb_chunks_kb", table_name="kb_chunks")
    op.drop_table("kb_chunks")
    op.drop_index("ix_kb_documents_kb_created", table_name="kb_documents")
    op.drop_table("kb_documents")
    op.drop_index("ix_knowledge_bases_tenant_name", table_name="knowledge_bases")
    op.drop_table("knowledge_bases")
