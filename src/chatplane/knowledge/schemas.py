"""Shapes of the knowledge API (`/api/kb/...`)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

Visibility = Literal["private", "tenant"]
DocumentStatus = Literal["queued", "indexing", "ready", "failed"]


class KnowledgeBaseIn(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    description: str = Field(default="", max_length=2000)
    visibility: Visibility = "private"


class KnowledgeBasePatch(BaseModel):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=2000)
    visibility: Visibility | None = None


class KnowledgeBaseOut(BaseModel):
    id: str
    name: str
    description: str
    visibility: Visibility
    owner_id: str
    can_edit: bool
    documents: int
    embedding_model: str | None
    created_at: datetime
    updated_at: datetime


class KnowledgeBaseList(BaseModel):
    items: list[KnowledgeBaseOut]


class DocumentOut(BaseModel):
    id: str
    kb_id: str
    filename: str
    media_type: str
    size_bytes: int
    status: DocumentStatus
    error: str | None
    chunks: int
    pages: int | None
    created_at: datetime
    indexed_at: datetime | None


class DocumentPage(BaseModel):
    items: list[DocumentOut]
    next_cursor: str | None


class DocumentAccepted(BaseModel):
    document_id: str
    status: DocumentStatus
    events_url: str
    duplicate: bool


class SearchIn(BaseModel):
    query: str = Field(min_length=1, max_length=2000)
    top_k: int = Field(default=5, ge=1, le=50)


class SearchHit(BaseModel):
    chunk_id: int
    document_id: str
    filename: str
    text: str
    score: float
    page: int | None
    heading: str | None


class SearchOut(BaseModel):
    mode: Literal["lexical", "hybrid"]
    results: list[SearchHit]


class KnowledgeHealth(BaseModel):
    status: Literal["ok", "degraded"]
    embeddings: str
    blob_store: str
    queue_depth: int
    oldest_job_age_s: float
    documents: dict[str, int]
