from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

TurnStatus = Literal["queued", "running", "completed", "failed", "cancelled"]


# The knowledge bases a turn retrieves from: at most this many.
KnowledgeBaseIds = list[Annotated[str, Field(min_length=1, max_length=64)]]
MAX_KNOWLEDGE_BASES = 10


class ConversationIn(BaseModel):
    title: str | None = Field(default=None, max_length=200)
    model: str | None = Field(default=None, min_length=1, max_length=200)
    knowledge_base_ids: KnowledgeBaseIds | None = Field(
        default=None, max_length=MAX_KNOWLEDGE_BASES
    )


class ConversationPatch(BaseModel):
    title: str | None = Field(default=None, min_length=1, max_length=200)
    knowledge_base_ids: KnowledgeBaseIds | None = Field(
        default=None, max_length=MAX_KNOWLEDGE_BASES
    )


class ConversationOut(BaseModel):
    id: str
    title: str
    model: str
    knowledge_base_ids: list[str]
    created_at: datetime
    updated_at: datetime


class Citation(BaseModel):
    n: int
    document_id: str
    chunk_id: int
    page: int | None = None
    quote: str
    filename: str | None = None


class ConversationPage(BaseModel):
    items: list[ConversationOut]
    next_cursor: str | None


class MessageOut(BaseModel):
    id: str
    role: Literal["user", "assistant", "system"]
    content: str
    citations: list[Citation] | None = None
    created_at: datetime


class ConversationDetail(ConversationOut):
    active_turn_id: str | None
    messages: list[MessageOut]


class MessageIn(BaseModel):
    content: str = Field(min_length=1, max_length=200_000)
    model: str | None = Field(default=None, min_length=1, max_length=200)
    # This turn's knowledge bases, instead of the conversation's ([]: none).
    knowledge_base_ids: KnowledgeBaseIds | None = Field(
        default=None, max_length=MAX_KNOWLEDGE_BASES
    )


class TurnAccepted(BaseModel):
    turn_id: str
    message_id: str
    events_url: str


class TurnError(BaseModel):
    code: str
    message: str


class TurnOut(BaseModel):
    id: str
    conversation_id: str
    status: TurnStatus
    model: str
    attempts: int
    error: TurnError | None
    assistant_message_id: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class CancelOut(BaseModel):
    turn_id: str
    status: TurnStatus


class ModelOut(BaseModel):
    id: str
    provider: str


class ModelsOut(BaseModel):
    default_model: str
    models: list[ModelOut]


def turn_error(code: str | None, message: str | None) -> dict[str, Any] | None:
    if code is None:
        return None
    return {"code": code, "message": message or code}
