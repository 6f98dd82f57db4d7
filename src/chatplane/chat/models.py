"""Tables of the chat domain: conversations, their messages, and turns."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from chatplane.db.base import Base, CreatedMixin, IdMixin, UTCDateTime, utcnow

TURN_STATES = ("queued", "running", "completed", "failed", "cancelled")
TERMINAL_STATES = frozenset({"completed", "failed", "cancelled"})


class Conversation(IdMixin, CreatedMixin, Base):
    __tablename__ = "conversations"
    __table_args__ = (Index("ix_conversations_owner_recent", "user_id", "updated_at", "id"),)

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    title: Mapped[str] = mapped_column(String(200))
    model: Mapped[str] = mapped_column(String(200))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # Knowledge bases every turn of the conversation retrieves from (None: none).
    knowledge_base_ids: Mapped[list[str] | None] = mapped_column(JSON)


class Message(IdMixin, CreatedMixin, Base):
    __tablename__ = "messages"
    __table_args__ = (Index("ix_messages_conversation_seq", "conversation_id", "seq"),)

    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    tenant_id: Mapped[str] = mapped_column(String(32))
    seq: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text)
    # Set on assistant messages: at most one per turn, so a re-run turn never stores twice.
    turn_id: Mapped[str | None] = mapped_column(String(32), unique=True)
    # On assistant messages of turns that retrieved: the sources the answer cites.
    citations: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)


class Turn(IdMixin, CreatedMixin, Base):
    __tablename__ = "turns"
    __table_args__ = (
        Index("ix_turns_conversation_status", "conversation_id", "status"),
        # One turn per Idempotency-Key in a conversation (a conversation has one owner, so
        # the key is scoped to its tenant and user too); NULL keys never collide.
        Index(
            "uq_turns_conversation_idempotency", "conversation_id", "idempotency_key", unique=True
        ),
    )

    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    tenant_id: Mapped[str] = mapped_column(String(32))
    user_id: Mapped[str] = mapped_column(String(32))
    api_key_id: Mapped[str | None] = mapped_column(String(32))  # the key it was posted with
    user_message_id: Mapped[str] = mapped_column(String(32))
    model: Mapped[str] = mapped_column(String(200))
    # The knowledge bases this turn retrieves from (the message's, else the conversation's).
    knowledge_base_ids: Mapped[list[str] | None] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    assistant_message_id: Mapped[str | None] = mapped_column(String(32))
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # The client's Idempotency-Key of the post that created it, and the SHA-256 of that
    # post's body, so a retry with another body under the same key is refused.
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    # The budget counters its post reserved under, settled when it ends, whichever job runs
    # it (the sweeper's and the ops requeue's too).
    budget_keys: Mapped[list[str] | None] = mapped_column(JSON)
