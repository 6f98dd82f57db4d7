"""Re-indexing when the embedding model changes: every knowledge base whose vectors are not
the configured embedder's is embedded again in the background, as `kb.reindex` jobs on the
workers, and switches to the new model in one update (`KnowledgeIndex.reindex`): until then
it answers with what is complete, so a query never mixes two models' vectors.

Worker processes schedule the jobs when they start. Two workers starting together may both
schedule a knowledge base: the second job finds it switched, or embeds only what is missing."""

from __future__ import annotations

import structlog
from sqlalchemy import or_, select

from chatplane.broker.protocol import Broker, Job
from chatplane.db.engine import Database
from chatplane.errors import NotFound
from chatplane.knowledge.index import KnowledgeIndex
from chatplane.knowledge.ingest import keep_claimed
from chatplane.knowledge.models import KnowledgeBase
from chatplane.settings import Settings

log = structlog.get_logger("chatplane.knowledge")

REINDEX_JOB = "kb.reindex"


class Reindexer:
    def __init__(
        self, db: Database, broker: Broker, index: KnowledgeIndex, settings: Settings
    ) -> None:
        self.db = db
        self.broker = broker
        self.index = index
        self.settings = settings

    async def schedule(self) -> int:
        """Enqueue a job for each knowledge base whose vectors are not the embedder's;
        returns how many. Nothing to do without an embedder."""
        embedder = self.index.embedder
        if embedder is None:
            return 0
        async with self.db.session() as session:
            stale = (
                await session.scalars(
                    select(KnowledgeBase.id).where(
                        or_(
                            KnowledgeBase.embedding_model.is_(None),
                            KnowledgeBase.embedding_model != embedder.model,
                        )
                    )
                )
            ).all()
        for kb_id in stale:
            await self.broker.enqueue(REINDEX_JOB, {"kb_id": kb_id, "model": embedder.model})
        if stale:
            log.info("kb_reindex_scheduled", knowledge_bases=len(stale), model=embedder.model)
        return len(stale)

    async def run(self, job: Job) -> None:
        kb_id, model = str(job.payload["kb_id"]), str(job.payload["model"])
        embedder = self.index.embedder
        if embedder is None or embedder.model != model:
            log.info("kb_reindex_skipped", kb_id=kb_id, model=model)  # another configuration's
            return
        interval = self.settings.job_visibility_timeout_s / 3
        try:
            embedded = await keep_claimed(self.broker, job, interval, self.index.reindex(kb_id))
        except NotFound:
            log.info("kb_reindex_gone", kb_id=kb_id)  # deleted meanwhile
            return
        log.info("kb_reindexed", kb_id=kb_id, model=model, chunks=embedded)

    async def abandon(self, job: Job, reason: str) -> None:
        """It failed on every attempt: the knowledge base keeps answering with its old
        vectors (or lexically); the next worker start schedules it again."""
        log.error("kb_reindex_abandoned", kb_id=job.payload.get("kb_id"), reason=reason)
