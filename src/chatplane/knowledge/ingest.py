"""The ingestion job: original -> text -> chunks -> vectors -> index, on the worker pool.

Exactly once, whatever happens to the worker: the chunks (and vectors) of a document are
written in the same transaction that marks it `ready`, after replacing any that an earlier
run left (none can be committed without `ready`). A worker killed mid-document leaves the
job unacknowledged; another worker reclaims it after the visibility timeout and starts over.
A document deleted meanwhile is skipped."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Mapping
from typing import Any, TypeVar

import structlog

from chatplane.broker.protocol import Broker, Job
from chatplane.db.base import utcnow
from chatplane.db.engine import Database
from chatplane.errors import ChatplaneError
from chatplane.knowledge.blobs import BlobStore
from chatplane.knowledge.chunking import ChunkDraft, chunk_document
from chatplane.knowledge.extract import DocumentUnreadable, UnsupportedDocument, extract
from chatplane.knowledge.index import KnowledgeIndex
from chatplane.knowledge.models import Document
from chatplane.knowledge.repository import DocumentJobs
from chatplane.knowledge.service import document_stream
from chatplane.observability.metrics import kb_document_ended, kb_embedded
from chatplane.settings import Settings

log = structlog.get_logger("chatplane.knowledge")

T = TypeVar("T")
ACTIVE = ("queued", "indexing")


class DocumentIngester:
    def __init__(
        self,
        db: Database,
        broker: Broker,
        blobs: BlobStore,
        index: KnowledgeIndex,
        settings: Settings,
    ) -> None:
        self.db = db
        self.broker = broker
        self.blobs = blobs
        self.index = index
        self.settings = settings

    async def run(self, job: Job) -> None:
        document_id = str(job.payload["document_id"])
        structlog.contextvars.bind_contextvars(document_id=document_id)
        try:
            await self._run(document_id, job)
        finally:
            structlog.contextvars.unbind_contextvars("document_id")

    async def abandon(self, job: Job, reason: str) -> None:
        """The job failed on every attempt: the document ends `failed`, not `indexing`."""
        await self._fail(str(job.payload.get("document_id")), "ingest_abandoned", reason)

    async def _run(self, document_id: str, job: Job) -> None:
        began = time.monotonic()
        async with self.db.session() as session:
            jobs = DocumentJobs(session)
            document = await jobs.document(document_id)
            if document is None or document.status not in ACTIVE:
                return  # deleted, or indexed by an earlier run
            await jobs.set_status(document_id, "indexing", utcnow(), only_from=ACTIVE)
            await session.commit()
        stream = document_stream(document_id)
        log.info("document_indexing", attempt=job.attempt, media_type=document.media_type)
        try:
            drafts, pages = await self._beat(job, self._chunks(document, stream))
            vectors = None
            if self.index.embedder is not None and drafts:
                await self._progress(stream, "embedding", total=len(drafts))
                embedding = time.monotonic()
                try:
                    vectors = await self._beat(job, self.index.embed(drafts))
                except ChatplaneError:
                    kb_embedded(time.monotonic() - embedding, failed=True)
                    raise
                kb_embedded(time.monotonic() - embedding)
            await self._progress(stream, "writing", total=len(drafts))
            count = await self._beat(job, self._write(document, drafts, vectors, pages))
        except (DocumentUnreadable, UnsupportedDocument) as exc:
            await self._fail(document_id, exc.code, exc.detail)
            return
        if count is None:
            log.info("document_gone")  # deleted while indexing; its chunks went with it
            return
        await self._end(stream, "document.ready", {"chunks": count})
        kb_document_ended("ready", chunks=count, seconds=time.monotonic() - began)
        log.info("document_ready", chunks=count, seconds=round(time.monotonic() - began, 3))
        await self.index.refresh_statistics()

    async def _chunks(self, document: Document, stream: str) -> tuple[list[ChunkDraft], int | None]:
        await self._progress(stream, "extracting")
        data = await self.blobs.get(document.blob_key)
        extracted = await asyncio.to_thread(extract, data, document.media_type)
        del data
        await self._progress(stream, "chunking")
        drafts = await asyncio.to_thread(
            chunk_document,
            extracted,
            max_tokens=self.settings.kb_chunk_tokens,
            overlap_tokens=self.settings.kb_chunk_overlap_tokens,
        )
        if not drafts:
            raise DocumentUnreadable("The document has no text to index")
        return drafts, extracted.pages

    async def _write(
        self,
        document: Document,
        drafts: list[ChunkDraft],
        vectors: Any,
        pages: int | None,
    ) -> int | None:
        """One transaction: the document goes `ready` with exactly these chunks, or
        nothing is written (None: the document was deleted meanwhile)."""
        async with self.db.session() as session:
            jobs = DocumentJobs(session)
            if not await jobs.set_status(
                document.id, "indexing", utcnow(), only_from=("indexing",)
            ):
                return None
            count = await self.index.write_document(
                session,
                tenant_id=document.tenant_id,
                kb_id=document.kb_id,
                document_id=document.id,
                drafts=drafts,
                vectors=vectors,
            )
            now = utcnow()
            await jobs.set_status(
                document.id,
                "ready",
                now,
                only_from=("indexing",),
                chunk_count=count,
                pages=pages,
                indexed_at=now,
                error=None,
            )
            await session.commit()
        return count

    async def _fail(self, document_id: str, code: str, reason: str) -> None:
        async with self.db.session() as session:
            failed = await DocumentJobs(session).set_status(
                document_id, "failed", utcnow(), only_from=ACTIVE, error=reason
            )
            await session.commit()
        if failed:
            log.warning("document_failed", code=code, reason=reason)
            kb_document_ended("failed")
            await self._end(
                document_stream(document_id),
                "document.failed",
                {"error": {"code": code, "message": reason}},
            )

    async def _progress(self, stream: str, stage: str, **counts: int) -> None:
        await self.broker.publish(stream, "document.indexing", {"stage": stage, **counts})

    async def _end(self, stream: str, event: str, data: Mapping[str, Any]) -> None:
        await self.broker.publish(stream, event, data)
        await self.broker.expire(stream, self.settings.turn_events_ttl_s)

    async def _beat(self, job: Job, work: Awaitable[T]) -> T:
        return await keep_claimed(
            self.broker, job, self.settings.job_visibility_timeout_s / 3, work
        )


async def keep_claimed(broker: Broker, job: Job, interval_s: float, work: Awaitable[T]) -> T:
    """Await `work` while keeping the job's claim alive (a long document outlives the
    visibility timeout); a lost claim stops the work (`JobLost`)."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=interval_s)
            if done:
                return task.result()
            await broker.heartbeat(job)
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
