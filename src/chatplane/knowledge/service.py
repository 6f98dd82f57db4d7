"""The rules of knowledge bases and their documents (no HTTP here).

An upload is checked (size, type by content, duplicate by hash), its original stored in the
blob store, its row committed `queued`, and an ingestion job enqueued; the workers do the
rest (`knowledge.ingest`). Reads and writes go through `KnowledgeRepository`, which scopes
every query to what the caller may see."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC

import structlog
from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from chatplane.auth.audit import AuditLog
from chatplane.auth.principal import Principal
from chatplane.broker.protocol import Broker
from chatplane.db.base import new_id, utcnow
from chatplane.db.cursors import decode_cursor, encode_cursor
from chatplane.db.engine import Database
from chatplane.errors import BadRequest, Forbidden, NotFound, PayloadTooLarge
from chatplane.knowledge.blobs import BlobStore
from chatplane.knowledge.extract import sniff_media_type
from chatplane.knowledge.index import KnowledgeIndex, SearchResult
from chatplane.knowledge.models import DOCUMENT_STATES, Chunk, Document, KnowledgeBase
from chatplane.knowledge.precheck import check_readable
from chatplane.knowledge.repository import DocumentJobs, KnowledgeRepository
from chatplane.observability.metrics import kb_document_queued, kb_retrieved
from chatplane.settings import Settings

log = structlog.get_logger("chatplane.knowledge")

INGEST_JOB = "kb.ingest"
MAX_FILENAME = 255


def document_stream(document_id: str) -> str:
    """The broker stream that carries a document's progress events."""
    return f"doc-{document_id}"


def events_url(document: Document) -> str:
    return f"/api/kb/{document.kb_id}/documents/{document.id}/events"


class UploadTooLarge(PayloadTooLarge):
    code = "upload_too_large"
    title = "The file is too large"


@dataclass(frozen=True, slots=True)
class KnowledgeBaseView:
    kb: KnowledgeBase
    documents: int
    can_edit: bool


@dataclass(frozen=True, slots=True)
class KnowledgeStats:
    documents: dict[str, int]  # by status
    oldest_waiting_age_s: float  # the oldest document queued or indexing; 0 when none


@dataclass(frozen=True, slots=True)
class Upload:
    document: Document
    duplicate: bool


def clean_filename(filename: str | None) -> str:
    """The last path segment, without control characters, at most 255 characters."""
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable()).strip()
    return name[:MAX_FILENAME] or "document"


# What the instructions and source lines around the passages may add, in bytes.
PASSAGES_FRAME_BOUND_BYTES = 4096


def retrieval_prompt_bound(settings: Settings) -> int:
    """An upper bound of the tokens the retrieved passages add to a prompt (for budget
    reservations): at most `kb_context_max_tokens` estimated tokens of four characters, each
    character at most four bytes of UTF-8, and each token at least one byte."""
    return settings.kb_context_max_tokens * 4 * 4 + PASSAGES_FRAME_BOUND_BYTES


def blob_key(document: Document) -> str:
    return f"{document.tenant_id}/{document.kb_id}/{document.id}"


class KnowledgeService:
    def __init__(
        self,
        db: Database,
        broker: Broker,
        blobs: BlobStore,
        index: KnowledgeIndex,
        audit: AuditLog,
        settings: Settings,
    ) -> None:
        self.db = db
        self.broker = broker
        self.blobs = blobs
        self.index = index
        self.audit = audit
        self.settings = settings

    @staticmethod
    def may_edit(principal: Principal, kb: KnowledgeBase) -> bool:
        return kb.owner_id == principal.user_id or principal.is_admin

    # Knowledge bases.

    async def list_knowledge_bases(self, principal: Principal) -> list[KnowledgeBaseView]:
        async with self.db.session() as session:
            rows = await _repo(session, principal).knowledge_bases()
        return [KnowledgeBaseView(kb, n, self.may_edit(principal, kb)) for kb, n in rows]

    async def create_knowledge_base(
        self, principal: Principal, *, name: str, description: str, visibility: str
    ) -> KnowledgeBaseView:
        now = utcnow()
        embedder = self.index.embedder
        kb = KnowledgeBase(
            id=new_id(),
            tenant_id=principal.tenant_id,
            owner_id=principal.user_id,
            name=name.strip() or "Knowledge base",
            description=description.strip(),
            visibility=visibility,
            # A new knowledge base has nothing to re-index: it answers with the current
            # embedder's vectors from its first document on.
            embedding_model=embedder.model if embedder is not None else None,
            created_at=now,
            updated_at=now,
        )
        async with self.db.session() as session:
            session.add(kb)
            await session.commit()
        await self.audit.record(
            "kb.created", tenant_id=kb.tenant_id, actor_id=principal.user_id, subject=kb.id
        )
        return KnowledgeBaseView(kb, 0, True)

    async def get_knowledge_base(self, principal: Principal, kb_id: str) -> KnowledgeBaseView:
        async with self.db.session() as session:
            repo = _repo(session, principal)
            kb = await _require(repo, kb_id)
            count = await repo.document_count(kb_id)
        return KnowledgeBaseView(kb, count, self.may_edit(principal, kb))

    async def update_knowledge_base(
        self,
        principal: Principal,
        kb_id: str,
        *,
        name: str | None,
        description: str | None,
        visibility: str | None,
    ) -> KnowledgeBaseView:
        async with self.db.session() as session:
            repo = _repo(session, principal)
            kb = await self._editable(repo, principal, kb_id)
            if name is not None:
                kb.name = name.strip() or kb.name
            if description is not None:
                kb.description = description.strip()
            if visibility is not None:
                kb.visibility = visibility
            kb.updated_at = utcnow()
            await session.commit()
            count = await repo.document_count(kb_id)
        return KnowledgeBaseView(kb, count, True)

    async def delete_knowledge_base(self, principal: Principal, kb_id: str) -> None:
        async with self.db.session() as session:
            repo = _repo(session, principal)
            kb = await self._editable(repo, principal, kb_id)
            keys = [d.blob_key for d in await repo.documents_page(kb_id, limit=10**9, before=None)]
            # Chunks first, row by row through the lexical index's triggers.
            await session.execute(delete(Chunk).where(Chunk.kb_id == kb.id))
            await session.delete(kb)
            await session.commit()
        for key in keys:
            await self.blobs.delete(key)
        await self.audit.record(
            "kb.deleted", tenant_id=kb.tenant_id, actor_id=principal.user_id, subject=kb_id
        )

    async def readable(self, principal: Principal, kb_ids: Sequence[str]) -> list[str]:
        """The ids, deduplicated in order, when the caller may read every one; else 404
        naming the first it may not (another tenant's looks the same as a missing one)."""
        unique = list(dict.fromkeys(kb_ids))
        async with self.db.session() as session:
            found = await _repo(session, principal).visible_ids(unique)
        missing = [kb_id for kb_id in unique if kb_id not in found]
        if missing:
            raise NotFound(
                f"Knowledge base {missing[0]} was not found",
                code="knowledge_base_not_found",
            )
        return found

    async def still_readable(self, principal: Principal, kb_ids: Sequence[str]) -> list[str]:
        """Those of `kb_ids` the caller may read now (a conversation's knowledge bases may
        have been deleted or made private since they were attached)."""
        if not kb_ids:
            return []
        async with self.db.session() as session:
            return await _repo(session, principal).visible_ids(list(dict.fromkeys(kb_ids)))

    # Documents.

    async def upload(
        self, principal: Principal, kb_id: str, *, filename: str | None, data: bytes
    ) -> Upload:
        if len(data) > self.settings.upload_max_bytes:
            raise UploadTooLarge(f"The file is over {self.settings.upload_max_mb} MB")
        if not data:
            raise BadRequest("The file is empty", code="empty_document", field="file")
        name = clean_filename(filename)
        media_type = await asyncio.to_thread(sniff_media_type, data, name)
        await asyncio.to_thread(check_readable, data, media_type)
        sha256 = await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest())
        async with self.db.session() as session:
            repo = _repo(session, principal)
            kb = await self._editable(repo, principal, kb_id)
            existing = await repo.document_by_hash(kb.id, sha256)
        if existing is not None:
            return Upload(existing, duplicate=True)
        now = utcnow()
        document = Document(
            id=new_id(),
            kb_id=kb.id,
            tenant_id=kb.tenant_id,
            uploaded_by=principal.user_id,
            filename=name,
            media_type=media_type,
            size_bytes=len(data),
            sha256=sha256,
            blob_key="",
            status="queued",
            chunk_count=0,
            created_at=now,
            updated_at=now,
        )
        document.blob_key = blob_key(document)
        # The original first: a committed row always has its blob.
        await self.blobs.put(document.blob_key, data)
        try:
            async with self.db.session() as session:
                session.add(document)
                await session.commit()
        except IntegrityError:
            await self.blobs.delete(document.blob_key)
            async with self.db.session() as session:  # the same file, uploaded concurrently
                existing = await _repo(session, principal).document_by_hash(kb.id, sha256)
            if existing is None:
                raise
            return Upload(existing, duplicate=True)
        except BaseException:
            await self.blobs.delete(document.blob_key)
            raise
        await self.broker.publish(document_stream(document.id), "document.queued", {})
        await self.broker.enqueue(INGEST_JOB, {"document_id": document.id})
        kb_document_queued()
        log.info(
            "document_uploaded",
            kb_id=kb.id,
            document_id=document.id,
            media_type=media_type,
            size_bytes=len(data),
        )
        return Upload(document, duplicate=False)

    async def list_documents(
        self, principal: Principal, kb_id: str, *, limit: int, cursor: str | None
    ) -> tuple[Sequence[Document], str | None]:
        before = decode_cursor(cursor) if cursor else None
        async with self.db.session() as session:
            repo = _repo(session, principal)
            await _require(repo, kb_id)
            page = await repo.documents_page(kb_id, limit=limit + 1, before=before)
        items = page[:limit]
        return items, encode_cursor(items[-1].created_at, items[-1].id) if len(
            page
        ) > limit else None

    async def get_document(self, principal: Principal, kb_id: str, document_id: str) -> Document:
        async with self.db.session() as session:
            repo = _repo(session, principal)
            await _require(repo, kb_id)
            return await _require_document(repo, kb_id, document_id)

    async def document_content(
        self, principal: Principal, kb_id: str, document_id: str
    ) -> tuple[Document, bytes]:
        document = await self.get_document(principal, kb_id, document_id)
        return document, await self.blobs.get(document.blob_key)

    async def delete_document(self, principal: Principal, kb_id: str, document_id: str) -> None:
        """The document's chunks leave the index in the same transaction as its row."""
        async with self.db.session() as session:
            repo = _repo(session, principal)
            await self._editable(repo, principal, kb_id)
            document = await _require_document(repo, kb_id, document_id)
            await self.index.delete_document(session, document.id)
            await session.delete(document)
            await session.commit()
        await self.blobs.delete(document.blob_key)
        await self.audit.record(
            "kb.document_deleted",
            tenant_id=document.tenant_id,
            actor_id=principal.user_id,
            subject=document.id,
            kb_id=kb_id,
        )

    # Retrieval.

    async def search(
        self, principal: Principal, kb_id: str, *, query: str, top_k: int
    ) -> tuple[SearchResult, dict[str, str]]:
        """Ranked passages and the filenames of their documents."""
        await self.get_knowledge_base(principal, kb_id)
        result = await self.retrieve(principal.tenant_id, [kb_id], query, top_k)
        async with self.db.session() as session:
            names = await _repo(session, principal).filenames(
                [p.document_id for p in result.passages]
            )
        return result, names

    async def retrieve(
        self, tenant_id: str, kb_ids: Sequence[str], query: str, top_k: int
    ) -> SearchResult:
        """Search knowledge bases already checked for the caller, timed for the metrics."""
        began = time.perf_counter()
        result = await self.index.search(
            tenant_id=tenant_id, kb_ids=kb_ids, query=query, top_k=top_k
        )
        kb_retrieved(result.mode, time.perf_counter() - began)
        return result

    async def stats(self) -> KnowledgeStats:
        """Documents by status and the age of the oldest not yet indexed (for /metrics)."""
        async with self.db.session() as session:
            jobs = DocumentJobs(session)
            counts = await jobs.status_counts()
            oldest = await jobs.oldest_waiting()
        if oldest is not None and oldest.tzinfo is None:
            oldest = oldest.replace(tzinfo=UTC)
        age = max(0.0, (utcnow() - oldest).total_seconds()) if oldest is not None else 0.0
        return KnowledgeStats({state: counts.get(state, 0) for state in DOCUMENT_STATES}, age)

    async def health(self) -> dict[str, object]:
        """Documents by status, the job queue, the embedder and the blob store."""
        async with self.db.session() as session:
            documents = await DocumentJobs(session).status_counts()
        stats = await self.broker.stats()
        blob_store = "ok"
        try:
            await self.blobs.exists("health-check")
        except Exception as exc:  # any failure of the store is what this reports
            blob_store = f"unavailable: {exc.__class__.__name__}"
        return {
            "status": "ok" if blob_store == "ok" else "degraded",
            "embeddings": self.settings.embeddings,
            "blob_store": blob_store,
            "queue_depth": stats.depth,
            "oldest_job_age_s": stats.oldest_waiting_age_s,
            "documents": {state: documents.get(state, 0) for state in DOCUMENT_STATES},
        }

    async def _editable(
        self, repo: KnowledgeRepository, principal: Principal, kb_id: str
    ) -> KnowledgeBase:
        kb = await _require(repo, kb_id)
        if not self.may_edit(principal, kb):
            raise Forbidden(
                "Only the owner or an admin may change this knowledge base",
                code="knowledge_base_read_only",
            )
        return kb


def _repo(session: AsyncSession, principal: Principal) -> KnowledgeRepository:
    return KnowledgeRepository(session, tenant_id=principal.tenant_id, user_id=principal.user_id)


async def _require(repo: KnowledgeRepository, kb_id: str) -> KnowledgeBase:
    kb = await repo.knowledge_base(kb_id)
    if kb is None:
        raise NotFound("Knowledge base not found", code="knowledge_base_not_found")
    return kb


async def _require_document(repo: KnowledgeRepository, kb_id: str, document_id: str) -> Document:
    document = await repo.document(kb_id, document_id)
    if document is None:
        raise NotFound("Document not found", code="document_not_found")
    return document
