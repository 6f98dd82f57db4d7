"""Every table, imported in one place for Alembic and the metadata."""

from chatplane.auth.models import (
    ApiKey,
    AuditEvent,
    Invitation,
    RefreshToken,
    Tenant,
    User,
    WebSession,
)
from chatplane.chat.models import Conversation, Message, Turn
from chatplane.db.base import Base
from chatplane.knowledge.models import Chunk, ChunkVector, Document, KnowledgeBase
from chatplane.limits.models import Budget, TenantLimits
from chatplane.providers.models import ModelEndpoint
from chatplane.usage.models import ModelPrice, UsageRecord

__all__ = [
    "ApiKey",
    "AuditEvent",
    "Base",
    "Budget",
    "Chunk",
    "ChunkVector",
    "Conversation",
    "Document",
    "Invitation",
    "KnowledgeBase",
    "Message",
    "ModelEndpoint",
    "ModelPrice",
    "RefreshToken",
    "Tenant",
    "TenantLimits",
    "Turn",
    "UsageRecord",
    "User",
    "WebSession",
]
