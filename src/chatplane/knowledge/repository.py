"""Queries of the knowledge tables. Every read is scoped here, in one place: a knowledge base
is seen by the callers of its tenant when it is tenant-wide, by its owner when private."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import ColumnElement, and_, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from chatplane.db.cursors import older_than
from chatplane.knowledge.models import Document, KnowledgeBase


class KnowledgeRepository:
    def __init__(self, session: AsyncSession, *, tenant_id: str, user_id: str) -> None:
        self.session = session
        self.tenant_id = tenant_id
        self.user_id = user_id

    def _visible(self) -> ColumnElement[bool]:
        return and_(
            KnowledgeBase.tenant_id == self.tenant_id,
            or_(KnowledgeBase.visibility == "tenant", KnowledgeBase.owner_id == self.user_id),
        )

    async def knowledge_base(self, kb_id: str) -> KnowledgeBase | None:
        result = await self.session.scalars(
            select(KnowledgeBase).where(KnowledgeBase.id == kb_id, self._visible())
        )
        return result.first()

    async def visible_ids(self, kb_ids: Sequence[str]) -> list[str]:
        """The ids among `kb_ids` the caller can read, in the order given."""
        if not kb_ids:
            return []
        found = set(
            (
                await self.session.scalars(
                    select(KnowledgeBase.id).where(KnowledgeBase.id.in_(kb_ids), self._visible())
                )
            ).all()
        )
        return [kb_id for kb_id in kb_ids if kb_id in found]

    async def knowledge_bases(self) -> list[tuple[KnowledgeBase, int]]:
        """Every visible knowledge base with its document count, by name."""
        counts = (
            select(Document.kb_id, func.count().label("documents"))
            .where(Document.tenant_id == self.tenant_id)
            .group_by(Document.kb_id)
            .subquery()
        )
        statement = (
            select(KnowledgeBase, func.coalesce(counts.c.documents, 0))
            .outerjoin(counts, counts.c.kb_id == KnowledgeBase.id)
            .where(self._visible())
            .order_by(func.lower(KnowledgeBase.name), KnowledgeBase.id)
        )
        return [(kb, int(n)) for kb, n in (await self.session.execute(statement)).all()]

    async def document_count(self, kb_id: str) -> int:
        count = await self.session.scalar(
            select(func.count()).select_from(Document).where(Document.kb_id == kb_id)
        )
        return int(count or 0)

    async def document(self, kb_id: str, document_id: str) -> Document | None:
        """A document of a knowledge base the caller has already been allowed to see."""
        result = await self.session.scalars(
            select(Document).where(
                Document.id == document_id,
                Document.kb_id == kb_id,
                Document.tenant_id == self.tenant_id,
            )
        )
        return result.first()

    async def document_by_hash(self, kb_id: str, sha256: str) -> Document | None:
        result = await self.session.scalars(
            select(Document).where(Document.kb_id == kb_id, Document.sha256 == sha256)
        )
        return result.first()

    async def documents_page(
        self, kb_id: str, *, limit: int, before: tuple[datetime, str] | None
    ) -> Sequence[Document]:
        statement = select(Document).where(
            Document.kb_id == kb_id, Document.tenant_id == self.tenant_id
        )
        if before is not None:
            statement = statement.where(older_than(Document.created_at, Document.id, before))
        statement = statement.order_by(Document.created_at.desc(), Document.id.desc())
        return (await self.session.scalars(statement.limit(limit))).all()

    async def filenames(self, document_ids: Sequence[str]) -> dict[str, str]:
        if not document_ids:
            return {}
        rows = await self.session.execute(
            select(Document.id, Document.filename).where(
                Document.id.in_(set(document_ids)), Document.tenant_id == self.tenant_id
            )
        )
        return {str(document_id): str(filename) for document_id, filename in rows.all()}


class DocumentJobs:
    """What the ingestion job reads and writes; the document id itself is the scope."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def document(self, document_id: str) -> Document | None:
        return await self.session.get(Document, document_id)

    async def set_status(
        self,
        document_id: str,
        status: str,
        when: datetime,
        *,
        only_from: Sequence[str],
        **values: object,
    ) -> bool:
        """Move a document to `status` when it is in one of `only_from`; False when it is
        not (deleted meanwhile, or already ended by another run)."""
        result = await self.session.execute(
            update(Document)
            .where(Document.id == document_id, Document.status.in_(only_from))
            .values(status=status, updated_at=when, **values)
        )
        return bool(getattr(result, "rowcount", 0))

    async def status_counts(self) -> dict[str, int]:
        rows = await self.session.execute(
            select(Document.status, func.count()).group_by(Document.status)
        )
        return {status: int(n) for status, n in rows.all()}

    async def oldest_waiting(self) -> datetime | None:
        """When the oldest document still waiting to be indexed was uploaded."""
        oldest: datetime | None = await self.session.scalar(
            select(func.min(Document.created_at)).where(Document.status.in_(("queued", "indexing")))
        )
        return oldest
