"""Ingestion: documents one at a time through extraction, chunking, embedding, writing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bench.knowledge.common import MEDIA_TYPE, machine_cpu
from bench.knowledge.stores import Owner, ShapeDatabase, document_row, insert_documents
from bench.procs import system_cpu
from bench.stats import distribution_ms

if TYPE_CHECKING:
    from chatplane.knowledge.chunking import ChunkDraft
    from chatplane.knowledge.index import KnowledgeIndex
    from chatplane.settings import Settings


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

    rows = [document_row(owner, kb_id, f"{source}.md", data, "indexing") for source, data in files]
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
        "machine_cpu": machine_cpu(system_before, elapsed),
    }
    return outcome
