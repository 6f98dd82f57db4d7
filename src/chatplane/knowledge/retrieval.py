"""The retrieval step of an answer (a native turn or a `/v1` call with the `chatplane`
extension): search knowledge bases the caller may read, look up the documents' filenames
in one query, and build the system message of numbered passages."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import structlog

from chatplane.db.engine import Database
from chatplane.errors import ServiceUnavailable
from chatplane.knowledge.prompt import RetrievalPrompt, build_retrieval_prompt
from chatplane.knowledge.repository import KnowledgeRepository
from chatplane.observability.metrics import kb_retrieved

if TYPE_CHECKING:
    from chatplane.knowledge.index import KnowledgeIndex, Passage

log = structlog.get_logger("chatplane.knowledge")


class RetrievalFailed(ServiceUnavailable):
    code = "retrieval_failed"
    title = "The knowledge bases could not be searched"


async def retrieve(
    index: KnowledgeIndex,
    db: Database,
    *,
    tenant_id: str,
    user_id: str,
    kb_ids: Sequence[str],
    query: str,
    top_k: int,
    max_tokens: int,
) -> RetrievalPrompt:
    """The passages for `query` from those of `kb_ids` the user may read now (a knowledge
    base deleted or made private since it was attached is skipped), as a system message.
    Any failure (database, embedder) raises `RetrievalFailed`: an answer without the
    sources it was asked to use must not look like one that had them."""
    try:
        passages, filenames = await _search(
            index, db, tenant_id=tenant_id, user_id=user_id, kb_ids=kb_ids, query=query, top_k=top_k
        )
    except Exception as exc:  # whatever broke, the answer must not go on without sources
        # Names only: database errors carry the query's parameters (the user's words), and
        # a rendered traceback blocks the loop for seconds in the console renderer.
        cause = exc.__cause__
        log.warning(
            "retrieval_failed",
            error=exc.__class__.__name__,
            cause=cause.__class__.__name__ if cause is not None else None,
        )
        raise RetrievalFailed(
            f"Searching the knowledge bases failed ({exc.__class__.__name__})"
        ) from exc
    return build_retrieval_prompt(passages, max_tokens=max_tokens, filenames=filenames)


async def _search(
    index: KnowledgeIndex,
    db: Database,
    *,
    tenant_id: str,
    user_id: str,
    kb_ids: Sequence[str],
    query: str,
    top_k: int,
) -> tuple[list[Passage], dict[str, str]]:
    async with db.session() as session:
        repo = KnowledgeRepository(session, tenant_id=tenant_id, user_id=user_id)
        readable = await repo.visible_ids(list(dict.fromkeys(kb_ids)))
    if not readable:
        return [], {}
    began = time.perf_counter()
    result = await index.search(tenant_id=tenant_id, kb_ids=readable, query=query, top_k=top_k)
    kb_retrieved(result.mode, time.perf_counter() - began)
    if not result.passages:
        return [], {}
    async with db.session() as session:
        repo = KnowledgeRepository(session, tenant_id=tenant_id, user_id=user_id)
        filenames = await repo.filenames([p.document_id for p in result.passages])
    return list(result.passages), filenames
